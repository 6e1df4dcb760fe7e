"""① → ④: normalize a RawDataset, split leave-one-out, write items, interactions and sharded sequence files.

Leave-one-out (S2GR.md "Evaluation protocol"): for a user sequence s of length n, the test example predicts
s[n-1] from s[:n-1], validation predicts s[n-2] from s[:n-2], and every prefix of the rest is a training example
(s[i] from s[:i], i = 1..n-3). Histories keep their last `max_history` items; `history_len` keeps the full length
for the paper's >= 10-history view. Shards hold item ids, not SIDs, so one set of shards serves every tokenizer.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2gr_ray import artifacts
from s2gr_ray.config import Config
from s2gr_ray.data.ingest import DataError, RawDataset, kcore_filter, read_dataset

# The training rows are written in one fixed random order (the artifact depends on the data section alone, which is
# what its manifest hashes); each epoch's order comes from train.seed in the workers' shuffle.
SHARD_ORDER_SEED = 0
SEQUENCE_SCHEMA = pa.schema([
    ("user_id", pa.int32()),
    ("history", pa.list_(pa.int32())),
    ("target", pa.int32()),
    ("history_len", pa.int32()),
])


def item_text(fields: dict[str, str], text_fields: tuple[str, ...]) -> str:
    """The text to embed: configured fields in order, HTML entities unescaped, empty fields skipped."""
    parts = [html.unescape(fields[f]).strip() for f in text_fields if fields.get(f)]
    return ". ".join(p for p in parts if p)


def check_item_texts(texts: list[dict[str, str]], cfg: Config, source: str,
                     log: Callable[[str], None] = print) -> list[str]:
    """Each item's text to embed (`item_text`). When no item gets any text from data.text_fields and the texts
    are what the embed stage encodes (embed.path = ""), raise naming the fields configured and those present:
    the embeddings, and everything trained on them, would otherwise be meaningless. Some empty texts are fine.
    Configured text fields (unless embed.path makes texts moot) and a data.category_field that no item has are
    logged with the fields the items do have (not for the synthetic catalog, whose fields are fixed)."""
    fields = cfg.data.text_fields
    out = [item_text(t, fields) for t in texts]
    present: dict[str, None] = {}  # fields with some text, in first-seen order
    for t in texts:
        present.update(dict.fromkeys(k for k, v in t.items() if v and v.strip()))
    shown = ", ".join(list(present)[:30]) + (", ..." if len(present) > 30 else "")
    empty = sum(1 for t in out if not t)
    if cfg.data.format != "synthetic" and out and empty < len(out):  # (all empty: the error below says it)
        unused = [f for f in fields if f not in present]
        if unused and not cfg.embed.path:  # (precomputed vectors: the texts are not embedded)
            log(f"prepare: no item has text in {unused} of data.text_fields {list(fields)} (item fields with "
                f"text: {shown}); to embed other fields set data.text_fields, e.g. "
                f"data.text_fields=[{','.join(list(present)[:3])}]")
        if cfg.data.category_field and cfg.data.category_field not in present:
            log(f"prepare: no item has data.category_field {cfg.data.category_field!r} (item fields with text: "
                f"{shown}): category reports will have no categories; set data.category_field to the item's "
                "category field, or to '' for none")
    if not empty or not out:
        return out
    if empty < len(out):
        log(f"prepare: {empty:,} of {len(out):,} items have an empty text (none of data.text_fields "
            f"{list(fields)} set)")
        return out
    if cfg.embed.path:
        log(f"prepare: no item has text in data.text_fields {list(fields)}; not needed with embed.path = "
            f"{cfg.embed.path!r}, which does not encode texts")
        return out
    raise DataError(f"{source}: every item's text is empty: no item has text in data.text_fields = "
                    f"{list(fields)} (item fields with text: {shown or 'none besides the id'}); set "
                    "data.text_fields to the fields to embed, e.g. data.text_fields=[title,brand] (or pass "
                    "precomputed vectors with embed.path=FILE)")


def top_category(categories: str) -> str:
    """'Beauty > Makeup > Nails | …' → 'Makeup' (the level below the shared root), else the root."""
    first = categories.split(" | ")[0]
    path = [p.strip() for p in first.split(" > ") if p.strip()]
    if not path:
        return ""
    return path[1] if len(path) > 1 else path[0]


def normalize(raw: RawDataset, cfg: Config, log: Callable[[str], None] = print):
    """Dense ids, k-core, chronological sequences. Returns (sequences, item_raw_ids, user_raw_ids, skipped)."""
    d = cfg.data
    skipped = dict(raw.skipped)
    user_keys, user_idx = np.unique(np.asarray(raw.users, dtype=object).astype(str), return_inverse=True)
    item_order = {k: i for i, k in enumerate(raw.item_text)}  # items file order
    try:
        item_idx = np.fromiter((item_order[i] for i in raw.items), dtype=np.int64, count=len(raw.items))
    except KeyError as exc:
        raise DataError(f"{raw.source}: interaction with item {exc.args[0]!r} that is not in the items file") from None
    if not raw.sequences_are_final:  # the same (user, item, time) twice is a copy, not a repeat purchase: it
        # would put the test target into the user's history too
        trip = np.stack([user_idx, item_idx, np.asarray(raw.orders, dtype=np.int64)], 1)
        _, first = np.unique(trip, axis=0, return_index=True)
        if len(first) < len(trip):
            unique = np.zeros(len(trip), dtype=bool)
            unique[first] = True
            skipped["duplicate_interactions"] = int(len(trip) - len(first))
            log(f"prepare: dropped {len(trip) - len(first)} duplicate interactions (same user, item and time)")
        else:
            unique = np.ones(len(trip), dtype=bool)
    if not raw.sequences_are_final and d.kcore > 1:
        keep = kcore_filter(user_idx, item_idx, d.kcore, unique)
        skipped["interactions_removed_by_kcore"] = int((~keep & unique).sum())
        user_idx, item_idx, orders = user_idx[keep], item_idx[keep], raw.orders[keep]
        file_pos = np.flatnonzero(keep)
    elif not raw.sequences_are_final:
        file_pos = np.flatnonzero(unique)
        user_idx, item_idx, orders = user_idx[unique], item_idx[unique], raw.orders[unique]
    else:
        orders, file_pos = raw.orders, np.arange(len(item_idx))
    if len(item_idx) == 0:
        raise DataError(f"{raw.source}: no interactions left (after data.kcore = {d.kcore} filtering)")
    # chronological per user; ties keep file order
    perm = np.lexsort((file_pos, orders, user_idx))
    user_idx, item_idx = user_idx[perm], item_idx[perm]
    bounds = np.flatnonzero(np.diff(user_idx)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(user_idx)]])
    lengths = ends - starts
    short = lengths < d.min_sequence_length
    if short.any():
        if d.on_short_sequence == "error":
            bad = user_keys[user_idx[starts[np.flatnonzero(short)[0]]]]
            raise DataError(f"{raw.source}: user {bad!r} has {lengths[short][0]} interaction(s); leave-one-out "
                            f"needs >= data.min_sequence_length = {d.min_sequence_length} (set "
                            "data.on_short_sequence=skip to skip such users)")
        skipped["users_with_short_sequences"] = int(short.sum())
        log(f"prepare: skipped {int(short.sum())} users with fewer than {d.min_sequence_length} interactions")
        if short.all():
            raise DataError(f"{raw.source}: all {len(lengths)} users have fewer than data.min_sequence_length = "
                            f"{d.min_sequence_length} interactions (the longest has {int(lengths.max())}); "
                            "leave-one-out needs longer histories. Check data.user_column (a column unique per "
                            "row makes every user a single interaction) or lower data.kcore")
    # dense item ids 1..N over the items that remain, in items-file order
    kept_users = np.flatnonzero(~short)
    kept_mask = np.repeat(~short, lengths)
    used_items = np.unique(item_idx[kept_mask])
    remap = np.full(len(item_order), -1, dtype=np.int64)
    remap[used_items] = np.arange(1, len(used_items) + 1)
    dropped_items = len(item_order) - len(used_items)
    if dropped_items:
        skipped["items_without_interactions"] = int(dropped_items)
    raw_item_keys = list(raw.item_text)
    sequences = [remap[item_idx[starts[u]:ends[u]]].astype(np.int32) for u in kept_users]
    item_raw_ids = [raw_item_keys[i] for i in used_items]
    user_raw_ids = [str(user_keys[user_idx[starts[u]]]) for u in kept_users]
    return sequences, item_raw_ids, user_raw_ids, skipped


def split_examples(sequences: list[np.ndarray], max_history: int):
    """Leave-one-out examples per split: dict split -> (user_id, histories, target, history_len)."""
    out = {}
    for split, offset in (("test", 1), ("valid", 2)):
        users, hists, targets, hlen = [], [], [], []
        for u, s in enumerate(sequences, start=1):
            cut = len(s) - offset
            users.append(u)
            hists.append(s[max(0, cut - max_history):cut])
            targets.append(s[cut])
            hlen.append(cut)
        out[split] = (users, hists, targets, hlen)
    users, hists, targets, hlen = [], [], [], []
    for u, s in enumerate(sequences, start=1):
        for i in range(1, len(s) - 2):
            users.append(u)
            hists.append(s[max(0, i - max_history):i])
            targets.append(s[i])
            hlen.append(i)
    out["train"] = (users, hists, targets, hlen)
    return out


def _write_shards(folder: Path, rows, rows_per_shard: int, seed: int, shuffle: bool) -> int:
    users, hists, targets, hlen = rows
    order = np.random.default_rng(seed).permutation(len(users)) if shuffle else np.arange(len(users))
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = 0
    for start in range(0, len(order), rows_per_shard):
        idx = order[start:start + rows_per_shard]
        table = pa.Table.from_arrays([
            pa.array(np.asarray(users)[idx], pa.int32()),
            pa.array([hists[i] for i in idx], pa.list_(pa.int32())),
            pa.array(np.asarray(targets)[idx], pa.int32()),
            pa.array(np.asarray(hlen)[idx], pa.int32()),
        ], schema=SEQUENCE_SCHEMA)
        pq.write_table(table, folder / f"part-{n_shards:05d}.parquet")
        n_shards += 1
    return n_shards


def prepare_stage(cfg: Config, run: Path, log: Callable[[str], None] = print) -> dict:
    """Read the configured dataset and write RUN/{items,interactions}.parquet, RUN/sequences/, RUN/manifest.json.

    Outputs appear complete or not at all: everything is written into a temporary folder first.
    """
    t0 = time.time()
    run = Path(run)
    log(f"prepare: reading {cfg.data.format} data {cfg.data.path or ''}".rstrip())
    raw = read_dataset(cfg.data)
    for note in raw.notes:
        log(f"prepare: {note}")
    sequences, item_raw_ids, user_raw_ids, skipped = normalize(raw, cfg, log)
    texts = [raw.item_text[k] for k in item_raw_ids]
    embed_texts = check_item_texts(texts, cfg, raw.source, log)
    examples = split_examples(sequences, cfg.data.max_history)
    if not examples["train"][0]:
        raise DataError(f"{raw.source}: no training examples: every one of the {len(sequences):,} kept users has "
                        f"exactly 3 items (the last is the test target, the one before it the validation target, "
                        "and a training example needs a target after a first item); use sequences of 4 or more "
                        "items per user")
    for key, count in sorted(raw.skipped.items()):
        if count:
            log(f"prepare: skipped {count:,} record(s): {key.replace('_', ' ')}")
    _refuse_overwriting_inputs(run, raw.files)
    run.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_dir(run / ".prepare") as tmp:
        cats = [t.get(cfg.data.category_field, "") if cfg.data.category_field else "" for t in texts]
        pq.write_table(pa.table({
            "item_id": pa.array(np.arange(1, len(item_raw_ids) + 1), pa.int32()),
            "raw_id": pa.array(item_raw_ids, pa.string()),
            "title": pa.array([html.unescape(t.get("title", "")) for t in texts], pa.string()),
            "text": pa.array(embed_texts, pa.string()),
            "category": pa.array([top_category(c) for c in cats], pa.string()),
        }), tmp / "items.parquet")
        lengths = np.array([len(s) for s in sequences])
        pq.write_table(pa.table({
            "user_id": pa.array(np.repeat(np.arange(1, len(sequences) + 1), lengths), pa.int32()),
            "raw_user": pa.array(np.repeat(np.asarray(user_raw_ids, dtype=object), lengths).tolist(), pa.string()),
            "item_id": pa.array(np.concatenate(sequences), pa.int32()),
            "position": pa.array(np.concatenate([np.arange(n) for n in lengths]), pa.int32()),
        }), tmp / "interactions.parquet")
        if raw.item_vectors is not None:
            np.save(tmp / "item_vectors.npy", np.stack([raw.item_vectors[k] for k in item_raw_ids]))
        shards = {}
        for split in artifacts.SPLITS:
            shards[split] = _write_shards(tmp / "sequences" / split, examples[split], cfg.data.rows_per_shard,
                                          seed=SHARD_ORDER_SEED, shuffle=(split == "train"))
    # move the finished files into the run directory; the manifest goes first and comes back last, so an
    # interrupted swap reads as "not prepared" rather than as a mix of old and new files under the old manifest
    (run / artifacts.MANIFEST).unlink(missing_ok=True)
    for name in ("items.parquet", "interactions.parquet", "item_vectors.npy", "sequences"):
        src = run / ".prepare" / name
        dst = run / name
        if dst.exists():
            _remove(dst)
        if src.exists():
            src.rename(dst)
    _remove(run / ".prepare")
    counts = {s: len(examples[s][0]) for s in artifacts.SPLITS}
    manifest = artifacts.write_manifest(
        run, "data", cfg.section_hash("data"),
        source=raw.source, num_users=len(sequences), num_items=len(item_raw_ids),
        num_interactions=int(lengths.sum()), splits=counts, shards=shards, skipped=skipped,
        max_history=cfg.data.max_history, schema={f.name: str(f.type) for f in SEQUENCE_SCHEMA},
        item_file_hash=artifacts.file_hash(run / "items.parquet"),
        interactions_hash=artifacts.file_hash(run / "interactions.parquet"),  # in the hash: sequences changed
        inputs=input_fingerprint(raw.files, cfg.data), input_paths=_input_keys(raw.files, cfg.data),
    )
    log(f"prepare: {manifest['num_users']:,} users, {manifest['num_items']:,} items, "
        f"{manifest['num_interactions']:,} interactions; examples train {counts['train']:,} / valid "
        f"{counts['valid']:,} / test {counts['test']:,}; {sum(shards.values())} shards ({time.time() - t0:.1f}s)")
    return manifest


def input_fingerprint(paths, d, hashed: bool = True) -> dict[str, list]:
    """{file: [size, mtime_ns, sha256 prefix]} of the files a reader read (``RawDataset.files``; a folder:
    every file in it), keyed relative to data.path's folder (absolute outside it): a prepared run is stale when one
    of them changed since (`stale_inputs`). Other files beside the dataset (a README, a run folder) do not count.
    ``hashed=False`` leaves the content hash out (`stale_inputs` hashes only the files whose time changed)."""
    root = _data_root(d)
    out = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            st = f.stat()
            out[_input_key(f, root)] = [st.st_size, st.st_mtime_ns] + ([artifacts.file_hash(f)] if hashed else [])
    return out


def _input_keys(paths, d) -> list[str]:
    """The files read, relative to data.path's folder (absolute outside it): a dataset moved or copied elsewhere
    (a Ray job's unpacked working folder) keeps its fingerprint."""
    root = _data_root(d)
    return [_input_key(p, root) for p in paths]


def _input_key(path, root: Path | None) -> str:
    """One input file's name in the manifest: relative to the dataset's folder ``root``, absolute outside it."""
    f = Path(path).resolve()
    return str(f.relative_to(root)) if root is not None and f.is_relative_to(root) else str(f)


def _data_root(d) -> Path | None:
    if not d.path or d.format == "synthetic":
        return None
    root = Path(d.path).resolve()
    return root.parent if root.is_file() else root


def _tree_fingerprint(d) -> dict[str, list[int]]:
    """Every file under data.path (the file itself when it is one): the fingerprint of manifests written before
    they recorded the files read (``input_paths``)."""
    if not d.path or d.format == "synthetic":
        return {}
    root = Path(d.path).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    out = {}
    for f in files:
        st = f.stat()
        out[str(f.relative_to(root)) if f != root else f.name] = [st.st_size, st.st_mtime_ns]
    return out


def stale_inputs(manifest: dict, d) -> str | None:
    """Why the prepared data no longer matches the dataset files (None when it does, or when the manifest
    predates input fingerprints). A file with its recorded size and content but another modification time (the
    dataset copied, unpacked or checked out again) is unchanged; manifests without content hashes compare times."""
    saved = manifest.get("inputs")
    if saved is None:
        return None
    paths = manifest.get("input_paths")
    root = _data_root(d)
    now = _tree_fingerprint(d) if paths is None else \
        input_fingerprint([_input_path(p, root) for p in paths], d, hashed=False)
    changed = sorted(k for k in set(saved) | set(now) if not _same_file(saved.get(k), now.get(k), k, root))
    if not changed:
        return None
    what = ", ".join(f"{k} ({'added' if k not in saved else 'removed' if k not in now else 'modified'})"
                     for k in changed[:3])
    return f"built from dataset files that changed since: {what}{', ...' if len(changed) > 3 else ''}"


def _same_file(saved: list | None, now: list | None, key: str, root: Path | None) -> bool:
    """Whether input ``key`` (recorded as ``saved``, [size, mtime_ns(, content hash)]) still is what it was."""
    if saved is None or now is None or saved[0] != now[0]:
        return saved is None and now is None
    if saved[1] == now[1]:
        return True
    if len(saved) < 3:
        return False
    return artifacts.file_hash(_input_path(key, root)) == saved[2]


def _input_path(key: str, root: Path | None) -> Path:
    """The file an input key names (the inverse of `_input_key`)."""
    return Path(key) if Path(key).is_absolute() or root is None else root / key


# what prepare_stage writes into the run directory (each replaced as a whole)
OUTPUTS = ("items.parquet", "interactions.parquet", "item_vectors.npy", "sequences", artifacts.MANIFEST)


def _refuse_overwriting_inputs(run: Path, inputs: list[Path]) -> None:
    """Refuse a run directory where prepare would replace a file it has just read (e.g. `--out` set to the dataset
    folder, whose interactions.parquet is prepare's own output name): the dataset would be lost."""
    run = Path(run).resolve()
    sources = [Path(src).resolve() for src in inputs]
    for name in OUTPUTS:
        out = run / name
        for src in sources:
            if src == out or out in src.parents:
                raise DataError(f"prepare: the run directory {run} holds the input {src}, which prepare would "
                                f"replace with its own {name}; choose another --out (a run directory is "
                                "written by prepare; keep the dataset outside it)")


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def load_data_manifest(run: Path) -> dict:
    return artifacts.read_manifest(Path(run), "data")


def training_sequences(run: Path) -> list[np.ndarray]:
    """Each user's training part (sequence without its last two items), item ids 1..N, oldest first."""
    table = pq.read_table(Path(run) / "interactions.parquet", columns=["user_id", "item_id"])
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    bounds = np.flatnonzero(np.diff(users)) + 1
    return [seq[:-2] for seq in np.split(items, bounds)]


def item_categories(run: Path) -> np.ndarray | None:
    """Integer label of each item's top category (row i = item i+1), or None where the dataset has none."""
    cats = pq.read_table(Path(run) / "items.parquet", columns=["category"]).column("category").to_pylist()
    if not any(cats):
        return None
    _, labels = np.unique(np.asarray(cats, dtype=object).astype(str), return_inverse=True)
    return labels.astype(np.int64)
