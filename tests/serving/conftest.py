"""One tiny trained run shared by every serving test (prepare → embed → tokenize → Ray Train, ~30 s).

Item raw ids are rewritten to ASIN-like strings ("B000000001") after `prepare`, so raw-id and item-id
histories differ (the synthetic catalog's raw ids would otherwise equal the item ids). One local Ray serves
training and the Ray Data tests; it is shut down after the last serving test (other test areas assert that
no Ray is left running, and start their own).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TINY = [
    "data.synthetic.num_items=80", "data.synthetic.num_users=120", "data.synthetic.num_top_categories=2",
    "data.synthetic.num_sub_categories=2", "data.synthetic.max_length=10", "data.max_history=8",
    "embed.path=synthetic",
    "tokenizer.codebook_sizes=[8,8]", "tokenizer.num_coarse=2", "tokenizer.epochs=40", "tokenizer.latent_dim=8",
    "tokenizer.hidden_dims=[32]", "tokenizer.batch_size=256",
    "model.d_model=32", "model.num_heads=2", "model.d_head=16", "model.d_ff=64", "model.encoder_layers=1",
    "model.decoder_layers=1", "model.aux_decoder_layers=1", "model.dropout=0.0",
    "train.batch_size=32", "train.lr=0.005", "train.warmup_steps=5", "train.log_every=10", "train.patience=0",
    "train.max_epochs=2", "eval.beam_size=10", "eval.batch_size=64", "ray.num_cpus=2",
]


def asin(item_id: int) -> str:
    return f"B{item_id:09d}"


_STARTED: list[bool] = []  # whether this directory's fixtures started the running Ray


def _start_ray(tmp: Path) -> None:
    import ray

    if ray.is_initialized():
        return
    from s2gr_ray.config import RayConfig
    from s2gr_ray.training.ray_env import free_port, start_local_ray

    _STARTED.append(True)
    start_local_ray(RayConfig(num_cpus=2, temp_dir=str(tmp)), dashboard_port=free_port())


def pytest_runtest_teardown(item, nextitem):
    """Shut our Ray down once the next test is not a serving test (or there is none)."""
    import ray

    here = Path(__file__).parent
    if _STARTED and (nextitem is None or here not in Path(str(nextitem.path)).parents):
        _STARTED.clear()
        ray.shutdown()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    from s2gr_ray.config import load_config
    from s2gr_ray.data.embed import embed_stage
    from s2gr_ray.data.prepare import prepare_stage
    from s2gr_ray.tokenizer.stage import tokenize_stage
    from s2gr_ray.training.driver import train_stage

    run = tmp_path_factory.mktemp("serving") / "run"
    cfg = load_config(None, TINY)
    prepare_stage(cfg, run, print)
    items = pq.read_table(run / "items.parquet")
    raw = pa.array([asin(int(i)) for i in items.column("item_id").to_pylist()], pa.string())
    pq.write_table(items.set_column(items.column_names.index("raw_id"), "raw_id", raw), run / "items.parquet")
    embed_stage(cfg, run, print)
    tokenize_stage(cfg, run, log=print)
    _start_ray(tmp_path_factory.mktemp("ray"))
    train_stage(cfg, run, print)
    shutil.rmtree(run / "train", ignore_errors=True)  # Ray Train checkpoints: not needed for serving
    return run


@pytest.fixture
def ray_local(trained_run, tmp_path_factory):
    """A running local Ray (the one training started, unless something shut it down)."""
    _start_ray(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="session")
def recommender(trained_run):
    from s2gr_ray.serving.api import Recommender

    return Recommender.load(trained_run, device="cpu")


@pytest.fixture(scope="session")
def test_rows(trained_run) -> list[dict]:
    """The test split's rows (user_id, history item ids, target, history_len)."""
    return pq.read_table(sorted((trained_run / "sequences" / "test").glob("part-*.parquet"))[0]).to_pylist()


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run that a test may damage."""
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest, ignore=shutil.ignore_patterns("tensorboard", "train"))
    return dest
