"""SIDTokenizer: the fitted item -> Semantic ID table plus codebooks and coarse clusters (CONVENTIONS.md).

    sids             int64 [N, L_total]   row i <-> item id i + 1; codes 0-based per level
    level_sizes      list[int]            codebook sizes, then the dedup level's size (largest collision group)
    codebooks[l]     float32 [C_l, D]     semantic levels only (D = latent_dim; input dim for rqkmeans)
    coarse_centres[l] float32 [K_c, D], code_to_cluster[l] int64 [C_l]   thinking targets per semantic level

Files (no pickle; np.load(allow_pickle=False) reads them): sids.npy, codebooks.npz, coarse.npz,
tokenizer.json (sizes, config), report.json.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2gr_ray.artifacts import ArtifactError, write_json

FORMAT_VERSION = 1
FILES = ("sids.npy", "codebooks.npz", "coarse.npz", "tokenizer.json", "report.json")


@dataclass
class SIDTokenizer:
    sids: np.ndarray
    level_sizes: list[int]
    num_semantic_levels: int
    codebooks: list[np.ndarray]
    coarse_centres: list[np.ndarray]
    code_to_cluster: list[np.ndarray]
    report: dict[str, Any]
    config: dict[str, Any]
    _lookup: dict[tuple[int, ...], int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_items(self) -> int:
        return int(self.sids.shape[0])

    @property
    def has_dedup(self) -> bool:
        return self.sids.shape[1] > self.num_semantic_levels

    def sid_of(self, item_ids: np.ndarray | list[int] | int) -> np.ndarray:
        """SIDs [..., L_total] of item ids (1..N)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > self.num_items):
            raise ValueError(f"item ids must lie in 1..{self.num_items} (0 is padding); got "
                             f"{int(ids.min())}..{int(ids.max())}")
        return self.sids[ids - 1]

    def item_for_sid(self) -> dict[tuple[int, ...], int]:
        """SID tuple -> item id (1..N); built once, then cached."""
        if self._lookup is None:
            self._lookup = {tuple(int(c) for c in row): i + 1 for i, row in enumerate(self.sids.tolist())}
        return self._lookup

    # ------------------------------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "sids.npy", np.ascontiguousarray(self.sids, dtype=np.int64))
        np.savez(folder / "codebooks.npz", **{f"level_{i}": np.asarray(c, dtype=np.float32)
                                              for i, c in enumerate(self.codebooks)})
        arrays = {f"centres_{i}": np.asarray(c, dtype=np.float32) for i, c in enumerate(self.coarse_centres)}
        arrays.update({f"code_to_cluster_{i}": np.asarray(m, dtype=np.int64)
                       for i, m in enumerate(self.code_to_cluster)})
        np.savez(folder / "coarse.npz", **arrays)
        write_json(folder / "tokenizer.json", {
            "format_version": FORMAT_VERSION, "num_items": self.num_items,
            "level_sizes": [int(s) for s in self.level_sizes],
            "num_semantic_levels": int(self.num_semantic_levels), "config": self.config})
        write_json(folder / "report.json", self.report)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SIDTokenizer":
        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).exists()]
        if missing:
            raise ArtifactError(f"tokenizer folder {folder} lacks {', '.join(missing)}; re-run the tokenize "
                                "stage (s2gr tokenize) to rebuild it")
        try:
            meta = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            sids = np.load(folder / "sids.npy", allow_pickle=False)
            with np.load(folder / "codebooks.npz", allow_pickle=False) as z:
                levels = int(meta["num_semantic_levels"])
                codebooks = [z[f"level_{i}"] for i in range(levels)]
            with np.load(folder / "coarse.npz", allow_pickle=False) as z:
                centres = [z[f"centres_{i}"] for i in range(levels)]
                maps = [z[f"code_to_cluster_{i}"] for i in range(levels)]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise ArtifactError(f"tokenizer folder {folder} is damaged ({type(exc).__name__}: {exc}); "
                                "re-run the tokenize stage to rebuild it") from None
        tok = cls(sids=sids, level_sizes=[int(s) for s in meta["level_sizes"]], num_semantic_levels=levels,
                  codebooks=codebooks, coarse_centres=centres, code_to_cluster=maps, report=report,
                  config=meta.get("config", {}))
        tok.check(where=str(folder))
        return tok

    def check(self, where: str = "tokenizer") -> None:
        """Consistency of shapes and code ranges; raises ArtifactError naming what is wrong."""
        s = self.sids
        problems = []
        if s.ndim != 2 or s.dtype != np.int64:
            problems.append(f"sids must be int64 [N, L_total], got {s.dtype} {s.shape}")
        elif s.shape[1] != len(self.level_sizes):
            problems.append(f"sids have {s.shape[1]} levels but level_sizes lists {len(self.level_sizes)}")
        elif s.size and ((s < 0).any() or (s >= np.asarray(self.level_sizes)[None, :]).any()):
            problems.append("some codes lie outside 0..level_size-1")
        for i, (book, m) in enumerate(zip(self.codebooks, self.code_to_cluster)):
            if book.shape[0] != self.level_sizes[i] or m.shape[0] != book.shape[0]:
                problems.append(f"level {i + 1}: codebook {book.shape} / cluster map {m.shape} do not match "
                                f"level size {self.level_sizes[i]}")
        if problems:
            raise ArtifactError(f"{where}: inconsistent tokenizer ({'; '.join(problems)}); rebuild it")
