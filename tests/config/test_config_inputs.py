"""Config and CLI inputs that used to pass silently or end in a traceback: list keys written a,b; fractional
integers; train.monitor spellings; hidden_dims; a directory or a file where the CLI wants the other; single-stage
commands on a run directory built from another config. No Ray, no torch: prepare + embed on a tiny synthetic
catalog with its planted vectors (embed.path=synthetic)."""
import json
from pathlib import Path

import numpy as np
import pytest

from s2gr_ray import artifacts
from s2gr_ray.cli import artifact_mismatch, main
from s2gr_ray.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.synthetic.num_users=40", "data.synthetic.num_top_categories=2", "data.synthetic.num_sub_categories=2",
        "embed.path=synthetic"]


# ------------------------------------------------------------------------------------------ list keys
@pytest.mark.parametrize("value", ["title,brand", "title, brand", "[title, brand]"])
def test_comma_separated_string_list_is_split(value):
    assert load_config(None, [f"data.text_fields={value}"]).data.text_fields == ("title", "brand")


def test_single_field_and_yaml_string_value(tmp_path):
    assert load_config(None, ["data.text_fields=title"]).data.text_fields == ("title",)
    preset = tmp_path / "p.yaml"
    preset.write_text("data:\n  text_fields: title,categories\n")
    assert load_config(preset).data.text_fields == ("title", "categories")


def test_comma_separated_int_list():
    cfg = load_config(None, ["eval.ks=5,10,20", "eval.beam_size=20"])
    assert cfg.eval.ks == (5, 10, 20)


def test_broken_list_names_the_key():
    with pytest.raises(ConfigError, match=r"data.text_fields = '\[title,brand' is not a valid list"):
        load_config(None, ["data.text_fields=[title,brand"])


# ------------------------------------------------------------------------------------------ integers
@pytest.mark.parametrize("override,needle", [
    ("train.batch_size=256.7", "train.batch_size = 256.7 is not a whole number"),
    ("train.max_epochs=0.5", "train.max_epochs = 0.5 is not a whole number"),
    ("tokenizer.codebook_sizes=[8.5,8]", "tokenizer.codebook_sizes = 8.5 is not a whole number"),
])
def test_fractional_value_for_an_int_key_fails(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_whole_float_for_an_int_key_is_fine():
    assert load_config(None, ["train.batch_size=256.0"]).train.batch_size == 256


# ------------------------------------------------------------------------------------------ monitor, dims
@pytest.mark.parametrize("monitor", ["ndcg@010", "ndcg@20", "ndcg@ 10", "NDCG@10", "ndcg@+10", "ndcg@10.0"])
def test_monitor_must_be_a_metric_the_evaluation_writes(monitor):
    with pytest.raises(ConfigError, match=r"train.monitor = .* one of recall@5, recall@10, ndcg@5, ndcg@10"):
        load_config(None, [f"train.monitor={monitor}"])


def test_monitor_with_a_configured_cut_off():
    cfg = load_config(None, ["eval.ks=[5,10,20]", "eval.beam_size=20", "train.monitor=recall@20"])
    assert cfg.train.monitor == "recall@20"


@pytest.mark.parametrize("dims", ["[32,0]", "[-8]"])
def test_hidden_dims_must_be_positive(dims):
    with pytest.raises(ConfigError, match="tokenizer.hidden_dims"):
        load_config(None, [f"tokenizer.hidden_dims={dims}"])


def test_hidden_dims_may_be_empty():
    assert load_config(None, ["tokenizer.hidden_dims=[]"]).tokenizer.hidden_dims == ()


def test_appnp_without_h0_needs_a_step_only_when_smoothing_is_on():
    off = ["tokenizer.appnp_include_h0=false", "tokenizer.appnp_steps=0"]
    with pytest.raises(ConfigError, match="leaves H_align no term"):
        load_config(None, off)
    # without co-occurrence smoothing there is no H_align: the pair is unused, not an error
    assert not load_config(None, [*off, "tokenizer.cooccurrence=false"]).tokenizer.cooccurrence


# ------------------------------------------------------------------------------------------ CLI paths
def _cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_config_directory_is_a_clean_error(capsys):
    code, err = _cli(["config", str(REPO / "configs")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "is a directory" in err and "quickstart.yaml" in err


def test_out_that_is_a_file_is_a_clean_error(tmp_path, capsys):
    target = tmp_path / "run"
    target.write_text("not a folder")
    code, err = _cli(["prepare", *TINY, "--out", str(target)], capsys)
    assert code == 2 and "Traceback" not in err and "--out" in err and "is a file" in err


def test_os_error_below_the_out_path_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code, err = _cli(["prepare", *TINY, "--out", str(tmp_path / "f" / "run")], capsys)
    assert code == 2 and "Not a directory" in err and "Errno" not in err


# ---------------------------------------------------------------------- single stages and upstream config
def _rows(run: Path) -> int:
    return int(np.load(run / "embeddings" / "embeddings.npy").shape[0])


def test_embed_rebuilds_data_prepared_from_another_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", *TINY, "data.synthetic.num_items=40", "--out", str(run)]) == 0
    assert main(["embed", *TINY, "data.synthetic.num_items=30", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "built from another config" in out and "s2gr prepare" in out
    assert json.loads((run / "manifest.json").read_text())["num_items"] == 30
    assert _rows(run) == 30  # was 40: the embeddings of the catalog prepared earlier


def test_matching_upstream_is_reused_and_speed_keys_keep_working(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["embed", *TINY, "data.synthetic.num_items=30", "--out", str(run)]) == 0
    data_hash = json.loads((run / "manifest.json").read_text())["hash"]
    capsys.readouterr()
    assert main(["embed", *TINY, "data.synthetic.num_items=30", "embed.batch_size=7", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "prepare:" not in out and "reusing" in out  # the data matched: not prepared again
    assert json.loads((run / "manifest.json").read_text())["hash"] == data_hash
    # a runtime-only key (the text encoder's batch size) differs from the one recorded: the embeddings stay current
    cfg = load_config(None, [*TINY, "data.synthetic.num_items=30", "embed.batch_size=7"])
    assert artifact_mismatch("embed", cfg, run) is None and artifact_mismatch("prepare", cfg, run) is None
    other = load_config(None, [*TINY, "data.synthetic.num_items=30", "embed.normalize=false"])
    assert "built from another config" in artifact_mismatch("embed", other, run)  # what it builds: asked again


def test_tokenizer_is_current_only_with_its_config_and_upstream(tmp_path):
    run = tmp_path / "run"
    argv = [*TINY, "data.synthetic.num_items=30"]
    assert main(["embed", *argv, "--out", str(run)]) == 0
    cfg = load_config(None, argv)
    assert artifact_mismatch("tokenize", cfg, run) == "missing"
    data_m = artifacts.read_manifest(run, "data")
    emb_m = artifacts.read_manifest(artifacts.embeddings_dir(run), "embeddings")
    artifacts.write_manifest(artifacts.tokenizer_dir(run), "tokenizer", cfg.section_hash("tokenizer"),
                             {"embeddings": emb_m["hash"], "data": data_m["hash"]})
    assert artifact_mismatch("tokenize", cfg, run) is None
    other_tok = load_config(None, [*argv, "tokenizer.num_coarse=8"])
    assert "config section tokenizer" in artifact_mismatch("tokenize", other_tok, run)
    other_data = load_config(None, [*TINY, "data.synthetic.num_items=20"])
    assert "built on the embed output" in artifact_mismatch("tokenize", other_data, run)
    # the embeddings rebuilt under it (another embed source): the tokenizer no longer matches
    artifacts.write_manifest(artifacts.embeddings_dir(run), "embeddings", cfg.section_hash("embed"),
                             {"data": data_m["hash"]}, content_key="other")
    assert "another embeddings artifact" in artifact_mismatch("tokenize", cfg, run)


def test_train_chain_builds_rebuilds_and_reuses(tmp_path, monkeypatch, capsys):
    """`s2gr train` brings each upstream stage up to date: the real prepare, embed and tokenize stages (a tiny
    tokenizer, seconds), with train stubbed (Ray Train is tested in tests/training)."""
    import s2gr_ray.cli as cli

    calls: list[str] = []
    real_tokenize = cli._tokenize

    def tokenize(cfg, out):
        calls.append("tokenize")
        return real_tokenize(cfg, out)

    monkeypatch.setattr(cli, "_tokenize", tokenize)
    monkeypatch.setattr(cli, "_train", lambda cfg, out: calls.append("train") or {})
    run = tmp_path / "run"
    tiny_tok = ["tokenizer.codebook_sizes=[8,8]", "tokenizer.num_coarse=4", "tokenizer.epochs=5",
                "tokenizer.hidden_dims=[32]", "tokenizer.latent_dim=8", "tokenizer.batch_size=64", "tokenizer.device=cpu"]
    a = [*TINY, *tiny_tok, "data.synthetic.num_items=30"]
    b = [*TINY, *tiny_tok, "data.synthetic.num_items=20"]
    assert main(["train", *a, "--out", str(run)]) == 0 and calls == ["tokenize", "train"]
    assert _rows(run) == 30
    calls.clear()
    capsys.readouterr()
    assert main(["train", *a, "train.lr=0.01", "--out", str(run)]) == 0  # train keys: nothing upstream redone
    assert calls == ["train"] and "prepare:" not in capsys.readouterr().out
    calls.clear()
    assert main(["train", *b, "--out", str(run)]) == 0  # another catalog: prepare, embed, tokenize again
    assert calls == ["tokenize", "train"] and _rows(run) == 20
    assert artifact_mismatch("tokenize", load_config(None, b), run) is None
    calls.clear()
    capsys.readouterr()
    assert main(["train", *b, "tokenizer.num_coarse=8", "--out", str(run)]) == 0  # tokenizer key: refit only
    assert calls == ["tokenize", "train"] and "prepare:" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ filters a format ignores
@pytest.mark.parametrize("overrides,needle", [
    (["data.kcore=5"], "data.kcore = 5 has no effect with data.format = 'synthetic'"),
    (["data.format=sequences", "data.path=/d", "data.kcore=5"], "data.kcore = 5 has no effect .* 'sequences'"),
    (["data.format=amazon", "data.path=/d", "data.min_rating=4"], "data.min_rating = 4.0 has no effect .* 'amazon'"),
    # a dataset path with the (default) synthetic format was read as nothing: the run trained on generated data
    (["data.path=/data/beauty"], "data.path = '/data/beauty' has no effect with data.format = 'synthetic'"),
    (["data.synthetic.num_items=20"], r"data.synthetic.num_items = 20 is below .* \(6 x 4 = 24"),
])
def test_a_filter_the_format_would_ignore_fails(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_filters_the_format_applies_are_accepted():
    assert load_config(None, ["data.format=amazon", "data.path=/d", "data.kcore=5"]).data.kcore == 5
    cfg = load_config(None, ["data.format=movielens", "data.path=/d", "data.kcore=5", "data.min_rating=4"])
    assert (cfg.data.kcore, cfg.data.min_rating) == (5, 4.0)
    assert load_config(None, ["data.format=tables", "data.path=/d", "data.kcore=2"]).data.kcore == 2
