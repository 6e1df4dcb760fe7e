"""③ The tokenize stage: RUN/embeddings + RUN (prepared data) -> RUN/tokenizer (artifacts.py layout).

Writes, atomically: the SIDTokenizer files (sid.py), report.json, usage.png and a manifest of kind "tokenizer"
(config hash of the tokenizer section; upstream hashes of the embeddings and data artifacts). When the target
folder already holds a tokenizer built from the same config and upstream, it is reused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from s2gr_ray import artifacts
from s2gr_ray.config import Config
from s2gr_ray.tokenizer.fit import fit_tokenizer
from s2gr_ray.tokenizer.report import plot_usage
from s2gr_ray.tokenizer.sid import SIDTokenizer


def tokenize_stage(cfg: Config, run: Path, out: Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the tokenizer of ``run`` (or reuse a matching one) and return its report."""
    from s2gr_ray.data.splits import item_categories, training_sequences  # data area; imported lazily

    run = Path(run)
    out = Path(out) if out is not None else artifacts.tokenizer_dir(run)
    emb_dir = artifacts.embeddings_dir(run)
    emb_manifest = artifacts.read_manifest(emb_dir, "embeddings")
    data_manifest = artifacts.read_manifest(run, "data")
    artifacts.check_upstream(emb_manifest, "data", data_manifest["hash"], emb_dir)
    config_hash = cfg.section_hash("tokenizer")
    upstream = {"embeddings": emb_manifest["hash"], "data": data_manifest["hash"]}

    existing = out / artifacts.MANIFEST
    if existing.exists():
        try:
            m = artifacts.read_manifest(out, "tokenizer")
            if m.get("config_hash") == config_hash and m.get("upstream") == upstream:
                tok = SIDTokenizer.load(out)  # also checks the files are complete and consistent
                log(f"tokenize: reusing {out} (same tokenizer config {config_hash} and upstream artifacts)")
                return tok.report
        except artifacts.ArtifactError as exc:
            log(f"tokenize: existing {out} is unusable ({exc}); refitting")

    emb_path = emb_dir / "embeddings.npy"
    if not emb_path.exists():
        raise artifacts.ArtifactError(f"{emb_path} is missing although {emb_dir / artifacts.MANIFEST} exists; "
                                      "re-run the embed stage")
    embeddings = np.load(emb_path, allow_pickle=False)
    sequences = training_sequences(run)
    categories = item_categories(run)
    num_items = data_manifest.get("num_items")
    log(f"tokenize: {cfg.tokenizer.kind} on {embeddings.shape[0]:,} x {embeddings.shape[1]} embeddings, "
        f"{len(sequences):,} training sequences")
    tok = fit_tokenizer(embeddings, sequences, cfg.tokenizer, categories=categories, log=log,
                        num_items=int(num_items) if num_items is not None else None)
    with artifacts.atomic_dir(out) as tmp:
        tok.save(tmp)
        plot_usage(tok.report, tmp / "usage.png")
        artifacts.write_manifest(tmp, "tokenizer", config_hash, upstream, num_items=tok.num_items,
                                 level_sizes=tok.level_sizes, num_semantic_levels=tok.num_semantic_levels)
    log(f"tokenize: wrote {out}")
    return tok.report


def load_tokenizer(run: Path, folder: Path | None = None) -> SIDTokenizer:
    """Load RUN/tokenizer after checking it was built from this run's embeddings (for later stages)."""
    run = Path(run)
    folder = Path(folder) if folder is not None else artifacts.tokenizer_dir(run)
    manifest = artifacts.read_manifest(folder, "tokenizer")
    emb_manifest = artifacts.read_manifest(artifacts.embeddings_dir(run), "embeddings")
    artifacts.check_upstream(manifest, "embeddings", emb_manifest["hash"], folder)
    return SIDTokenizer.load(folder)
