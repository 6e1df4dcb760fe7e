"""Run-directory layout and manifests (DESIGN.md convention 2: stages talk through artifacts).

    RUN/manifest.json                 prepare manifest: counts, split sizes, config hash   (① ④)
    RUN/items.parquet                 item_id (1..N), raw_id, title, text, category
    RUN/interactions.parquet          user_id (1..U), raw_user, item_id, position
    RUN/sequences/{train,valid,test}/part-NNNNN.parquet
                                      user_id, history list<int32> (item ids, oldest first, <= max_history),
                                      target int32, history_len int32 (full history length before truncation)
    RUN/embeddings/embeddings.npy     float32 [N, d]; row i is item_id i + 1                (②)
    RUN/tokenizer/                    codebooks, item -> SID table, coarse clusters, report  (③)
    RUN/train/                        Ray Train storage: checkpoints (unless train.storage_path) (⑤ ⑥)
    RUN/tensorboard/<run_name>/       TensorBoard curves (not with a URI train.storage_path)
    RUN/metrics.json                  final metrics of `s2gr run`
    RUN/config.yaml                   the resolved config the model was trained with

Every artifact folder holds a ``manifest.json`` with its kind, a hash of the config sections that built it,
the hashes of the upstream artifacts it was built from, and row counts. A later stage refuses an artifact whose
upstream hash does not match (sequences from dataset A never meet a tokenizer fitted on dataset B).
Writes are atomic: a stage writes into a temporary sibling folder and renames it into place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
SPLITS = ("train", "valid", "test")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, or was built from different upstream artifacts."""


def data_dir(run: Path) -> Path:
    return Path(run)


def sequences_dir(run: Path, split: str) -> Path:
    return Path(run) / "sequences" / split


def embeddings_dir(run: Path) -> Path:
    return Path(run) / "embeddings"


def tokenizer_dir(run: Path) -> Path:
    return Path(run) / "tokenizer"


def train_dir(run: Path) -> Path:
    return Path(run) / "train"


def model_dir(run: Path) -> Path:
    return Path(run) / "model"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        with contextlib.suppress(OSError):  # mkstemp's 0600 would hide it from other users of shared storage
            os.chmod(tmp, 0o666 & ~_UMASK)  # (a mount that refuses chmod keeps 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    """The process umask, from /proc where it can be read without setting it (os.umask can only read it by
    setting it, process-wide: done once, at import, elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is damaged: rebuild it") from None


def final_metric_views(metrics: dict[str, Any]) -> list[str]:
    """The test-time views of a metrics.json that hold numbers, in file order: valid, test and the paper view
    (test_hist10); train timings, empty views and the per-epoch valid_hist* are left out."""
    return [view for view, m in metrics.items() if isinstance(m, dict) and m
            and (view in ("valid", "test") or view.startswith("test_hist"))]


def file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def write_manifest(folder: Path, kind: str, config_hash: str, upstream: dict[str, str] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json``; its own ``hash`` is derived from kind, config hash and upstream."""
    upstream = dict(upstream or {})
    ident = json.dumps({"kind": kind, "config": config_hash, "upstream": upstream, "extra": extra},
                       sort_keys=True, default=_json_default)
    manifest = {"kind": kind, "hash": hashlib.sha256(ident.encode()).hexdigest()[:16],
                "config_hash": config_hash, "upstream": upstream, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **extra}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path, kind: str) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        run = _run_of(Path(folder), kind)
        out = run if run is not None else "RUN"
        raise ArtifactError(f"no {kind} artifact in {folder} ({MANIFEST} missing); run the stage that builds it "
                            f"first (s2gr {_STAGE_OF.get(kind, kind)} CONFIG --out {out})")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a manifest (a JSON object); rebuild it with the stage that writes it")
    if manifest.get("kind") != kind:
        raise ArtifactError(f"{path} describes a {manifest.get('kind')!r} artifact, expected {kind!r}")
    for key, typ, name in (("hash", str, "a string"), ("upstream", dict, "a JSON object")):  # write_manifest's
        if not isinstance(manifest.get(key), typ):
            what = "is missing" if key not in manifest else f"is {manifest[key]!r}, not {name}"
            run = _run_of(Path(folder), kind)
            raise ArtifactError(f"{path}: {key!r} {what}: the file is damaged or from another program; rebuild it "
                                f"(s2gr {_STAGE_OF.get(kind, kind)} CONFIG --out {run if run is not None else 'RUN'})")
    return manifest


# artifact kind -> the stage that builds it, and its folder in a run directory
_STAGE_OF = {"data": "prepare", "embeddings": "embed", "tokenizer": "tokenize", "model": "train"}
FOLDER_OF = {"data": data_dir, "embeddings": embeddings_dir, "tokenizer": tokenizer_dir, "model": model_dir}


def _run_of(folder: Path, kind: str) -> Path | None:
    """The run directory whose ``kind`` artifact lives in ``folder`` (the folder itself for "data", its parent for
    the artifacts in sub-folders); None when ``folder`` is not where a run keeps that kind (e.g. a sweep's cache)."""
    folder_of = FOLDER_OF.get(kind)
    if folder_of is None:
        return None
    for run in (folder, folder.parent):
        if folder_of(run) == folder:
            return run
    return None


def check_upstream(manifest: dict[str, Any], name: str, expected_hash: str, where: Path) -> None:
    """Refuse an artifact built from another upstream artifact than the one at hand."""
    got = manifest.get("upstream", {}).get(name)
    if got != expected_hash:
        raise ArtifactError(
            f"{where} was built from {name} {got}, but the {name} artifact here is {expected_hash}; "
            f"rebuild {where} from the current {name} (or point at the matching run directory)")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        with contextlib.suppress(OSError):  # mkdtemp's 0700 would hide it from other users of shared storage
            os.chmod(tmp, 0o777 & ~_UMASK)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
