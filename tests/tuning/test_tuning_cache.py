"""⑨ The sweep's shared artifacts without Ray: trial run directories link the prepared data, and concurrent
requests for one tokenizer config fit it once (file lock + cache by config hash)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from s2gr_ray.data.embed import embed_stage
from s2gr_ray.data.prepare import prepare_stage
from s2gr_ray.tuning.space import load_space, trial_config
from s2gr_ray.tuning.trial import build_tokenizer, link_shared_data, link_tokenizer, tokenizer_hash

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    spec = load_space(REPO / "search_spaces" / "ci_tiny.yaml")
    run = tmp_path_factory.mktemp("sweep") / "data"
    prepare_stage(spec.base, run, lambda m: None)
    embed_stage(spec.base, run, lambda m: None)
    return spec, run


def test_concurrent_requests_fit_one_tokenizer_once(data_run, tmp_path):
    spec, run = data_run
    cfg = trial_config(spec.base, {"tokenizer.codebook_sizes": [8, 8]})
    cache = tmp_path / "tokenizers"
    got: list[str] = []
    threads = [threading.Thread(target=lambda i=i: got.append(build_tokenizer(cfg.to_dict(), str(run), str(cache),
                                                                               f"t{i}"))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    builds = [json.loads(l) for l in (cache / "builds.jsonl").read_text().splitlines()]
    assert len(got) == 3, "a concurrent build_tokenizer call raised (see the thread exception above)"
    assert len(set(got)) == 1 and Path(got[0]).name == tokenizer_hash(cfg) and len(builds) == 1
    other = trial_config(spec.base, {"tokenizer.codebook_sizes": [16, 16]})
    assert Path(build_tokenizer(other.to_dict(), str(run), str(cache))).name == tokenizer_hash(other)
    assert len((cache / "builds.jsonl").read_text().splitlines()) == 2

    trial = tmp_path / "trials" / "abc"
    link_shared_data(run, trial)
    link_tokenizer(Path(got[0]), trial)
    assert (trial / "sequences").is_symlink() and (trial / "manifest.json").read_text() == \
        (run / "manifest.json").read_text()
    assert (trial / "tokenizer" / "manifest.json").exists() and not (trial / "train").exists()
    link_tokenizer(cache / tokenizer_hash(other), trial)  # relinking switches the tokenizer
    assert (trial / "tokenizer").resolve().name == tokenizer_hash(other)


def test_sweep_tokenizer_fits_on_the_cpu_unless_asked(tmp_path, monkeypatch):
    """The tokenizer task and the trial process reserve no GPU: tokenizer.device=auto must not pick one up."""
    from s2gr_ray.config import load_config
    from s2gr_ray.tuning import trial

    seen: list[str] = []
    monkeypatch.setattr(trial, "build_tokenizer", lambda d, *a: seen.append(d["tokenizer"]["device"]) or str(tmp_path))
    trial.ensure_tokenizer(load_config(None, []), tmp_path, tmp_path, 0, "t0")
    trial.ensure_tokenizer(load_config(None, ["tokenizer.device=cuda"]), tmp_path, tmp_path, 0, "t1")
    assert seen == ["cpu", "cuda"]
