"""Python serving API: load a trained run once, recommend top-K items with their reasoning path (GitHub #10).

    rec = Recommender.load("RUN")                          # tokenizer + model + catalog, checked against each other
    [res] = rec.recommend([["B0001", "B0042"]], k=10)      # histories as raw ids (ASINs) or item ids
    res.items[0].title, res.items[0].score, res.reasoning  # reasoning: nearest coarse cluster per thinking step

Inference is the trie-constrained beam search of S2GR.md "Inference" (no invalid item can be returned); each
thinking vector is read back as its nearest coarse cluster (cosine via the align projection), labelled by the
catalog items of that cluster (labels.py). Id resolution: ``id_type="item_id"`` (dense ids 1..N), ``"raw_id"`` (the
dataset's original ids) or ``"auto"`` (per history, the reading under which more ids are known; when both readings
know as many ids but name different items, as with numeric raw ids, the history is *ambiguous*: an empty result
whose ``reason`` asks for an explicit id_type). Unknown ids are reported in ``Recommendation.unknown``, never
silently dropped. A history without a single known item gives an *empty* result whose ``reason`` says why (so batch
scoring never dies on one bad user). Histories longer than the model's max_history keep the newest items
(``truncated`` counts the dropped).

Shape legend: B users, T history items, L SID levels, L_sem semantic levels, K beams / recommended items.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from s2gr_ray import artifacts
from s2gr_ray.serving.labels import ClusterLabel, cluster_labels

DEFAULT_BEAM = 20  # EvalConfig.beam_size's default; the beam is never narrower than k
ID_TYPES = ("auto", "item_id", "raw_id")
AMBIGUOUS = "ambiguous"  # Recommendation.id_type of a history that id_type="auto" could not read either way
UNREAD = "none"  # Recommendation.id_type of a history none of whose ids either reading knows (id_type="auto")
_SPLIT = re.compile(r"[\s,]+")
_QUOTES = "'\""


def _check_fields(record: Any, path: Path, fields: dict[str, type], stage: str) -> None:
    """A saved JSON record (the model's signature; artifacts.read_manifest checks manifests) must be an object
    holding ``fields`` of their types: otherwise the file is damaged (or hand-edited), and loading would fail deep
    inside with a KeyError or AttributeError."""
    if not isinstance(record, dict):
        raise ServingError(f"{path} holds {type(record).__name__}, not a JSON object: the file is damaged; rebuild "
                           f"it (s2gr {stage} <preset> --out RUN)")
    for key, typ in fields.items():
        value = record.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            what = "is missing" if key not in record else f"is {value!r}, not {'an' if typ is int else 'a'} " \
                f"{ {dict: 'JSON object', str: 'string', int: 'integer'}[typ] }"
            raise ServingError(f"{path}: {key!r} {what}: the file is damaged or from another program; rebuild it "
                               f"(s2gr {stage} <preset> --out RUN)")


def history_tokens(history: Any) -> list:
    """One history -> its ids: a list/array of ids, or a string "12 7 301", "12,7,301", "[12, 7, 301]" (what
    pandas to_csv writes for a list column) or "['B01', 'B02']"; bytes are read as UTF-8 text."""
    if isinstance(history, (bytes, bytearray)):
        history = bytes(history).decode("utf-8", errors="backslashreplace")  # undecodable bytes -> unknown ids
    if isinstance(history, str):
        text = history.strip().strip(_QUOTES).strip()
        if text[:1] + text[-1:] in ("[]", "()"):
            text = text[1:-1]
        return [t.strip(_QUOTES) for t in _SPLIT.split(text) if t.strip(_QUOTES)]
    if history is None or (isinstance(history, float) and history != history):  # a missing history (None, a
        return []  # pandas NaN cell): no ids, as score reads a missing cell
    if isinstance(history, np.ndarray):
        history = history.tolist()
    return [t.decode("utf-8", errors="backslashreplace") if isinstance(t, (bytes, bytearray)) else t
            for t in history]


class ServingError(RuntimeError):
    """A run cannot be served (missing/damaged/mismatched artifacts) or a request is malformed."""


@dataclass
class RecommendedItem:
    rank: int  # 1-based
    item_id: int
    raw_id: str
    title: str
    score: float  # sum of log-probs of the SID codes (higher is better)
    path: list[list[int]] = field(default_factory=list)  # [level][think step] coarse cluster of this beam


@dataclass
class ReasoningStep:
    level: int  # 1-based SID level
    step: int  # 1-based thinking step within the level
    cluster: int
    similarity: float  # cosine(projected thinking vector, cluster centre)
    label: str


@dataclass
class Recommendation:
    items: list[RecommendedItem]
    reasoning: list[ReasoningStep]  # the top-1 item's path (level 1's steps are shared by every item)
    history: list[int]  # the item ids fed to the model (after truncation), oldest first
    unknown: list[str]  # ids of the request that are not in the catalog
    truncated: int = 0  # known history items dropped because the history exceeded max_history
    id_type: str = "item_id"  # how the history ids were read
    reason: str | None = None  # why ``items`` is empty, if it is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ServingError(f"device {device!r} is not a torch device ({exc}); use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ServingError(f"device {device!r}: this torch has no usable CUDA device (torch {torch.__version__}); "
                           "use --device auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ServingError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 "
                           "or auto")
    return dev


def _read_catalog(run: Path, num_items: int) -> dict[str, list]:
    path = run / "items.parquet"
    if not path.exists():
        raise ServingError(f"{path} is missing; the run directory is incomplete (re-run `s2gr prepare`)")
    table = pq.read_table(path)
    cols = {c: table.column(c).to_pylist() if c in table.column_names else None
            for c in ("item_id", "raw_id", "title", "category")}
    if cols["item_id"] is None or sorted(cols["item_id"]) != list(range(1, num_items + 1)):
        raise ServingError(f"{path} must list item ids 1..{num_items} (the tokenizer's items); it holds "
                           f"{table.num_rows} rows: catalog and tokenizer come from different runs")
    order = np.argsort(np.asarray(cols["item_id"]))
    pick = lambda vals, default: [str(vals[i]) if vals and vals[i] is not None else default  # noqa: E731
                                  for i in order]
    return {"raw_id": pick(cols["raw_id"], ""), "title": pick(cols["title"], ""),
            "category": pick(cols["category"], "")}


def check_catalog(run: Path, tok_dir: Path, tok_manifest: dict[str, Any]) -> dict[str, Any]:
    """Refuse a tokenizer fitted on another prepared catalog than RUN's (the same item count with other items,
    e.g. after `s2gr prepare` with another seed); returns RUN's data manifest."""
    if not (run / artifacts.MANIFEST).exists():
        raise ServingError(f"{run / artifacts.MANIFEST} is missing: {run} holds no prepared data, so the catalog "
                           "cannot be checked against the tokenizer; restore the run's prepared data or re-run "
                           f"prepare, tokenize and train (s2gr train <preset> --out {run})")
    data_manifest = artifacts.read_manifest(run, "data")  # damaged: named as such, not as a mismatch
    try:
        artifacts.check_upstream(tok_manifest, "data", data_manifest.get("hash"), tok_dir)
    except artifacts.ArtifactError as exc:
        raise ServingError(f"catalog/tokenizer mismatch: {exc}. The prepared data in {run} (manifest.json, "
                           f"items.parquet) is not the catalog the tokenizer in {tok_dir} and the model were built "
                           "from: point at the run directory that holds the matching data, or re-run tokenize and "
                           f"train on this data (s2gr train <preset> --out {run})") from None
    return data_manifest


def _popularity(run: Path, num_items: int) -> np.ndarray | None:
    path = run / "interactions.parquet"
    if not path.exists():
        return None
    ids = pq.read_table(path, columns=["item_id"]).column("item_id").to_numpy()
    return np.bincount(ids.astype(np.int64), minlength=num_items + 1)[1:]


class Recommender:
    """A loaded run: model (eval mode) + tokenizer + prefix trie + item catalog + cluster labels."""

    def __init__(self, run: Path, model, tokenizer, catalog: dict[str, list], labels: list[list[ClusterLabel]],
                 device: torch.device, model_hash: str) -> None:
        from s2gr_ray.evaluation.trie import PrefixTrie

        self.run, self.model, self.tokenizer, self.device = run, model, tokenizer, device
        self.catalog, self.labels, self.model_hash = catalog, labels, model_hash
        self.num_items = tokenizer.num_items
        self.max_history = model.max_history
        self.raw_to_item = {r: i + 1 for i, r in enumerate(catalog["raw_id"]) if r}
        self.trie = PrefixTrie.from_sids(tokenizer.sids, tokenizer.level_sizes).to(device)
        self.sid_table = torch.zeros(self.num_items + 1, tokenizer.sids.shape[1], dtype=torch.long)
        self.sid_table[1:] = torch.from_numpy(tokenizer.sids)
        self.sid_table = self.sid_table.to(device)
        self.has_paths = bool(model.cfg.n_think > 0 and model.use_align)

    # -------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> "Recommender":
        """Load RUN/model + RUN/tokenizer + RUN/items.parquet; refuse mismatched or damaged artifacts."""
        from s2gr_ray.config import ConfigError, config_from_dict
        from s2gr_ray.model.s2gr import S2GR, check_signature
        from s2gr_ray.tokenizer.sid import SIDTokenizer

        run = Path(run_dir).resolve()
        model_dir = run / "model"
        if not (model_dir / "model.pt").exists():
            raise ServingError(f"no trained model in {model_dir} (model.pt missing); train one first: "
                               f"s2gr train <preset> --out {run}")
        model_manifest = artifacts.read_manifest(model_dir, "model")
        tok_dir = artifacts.tokenizer_dir(run)
        tok_manifest = artifacts.read_manifest(tok_dir, "tokenizer")
        check_catalog(run, tok_dir, tok_manifest)
        tok = SIDTokenizer.load(tok_dir)
        signature = artifacts.read_json(model_dir / "signature.json")
        where = f"{model_dir / 'signature.json'}"
        _check_fields(signature, model_dir / "signature.json", {"model": dict, "max_history": int}, "train")
        expected = {"level_sizes": [int(s) for s in tok.level_sizes],
                    "num_semantic_levels": int(tok.num_semantic_levels), "tokenizer_hash": tok_manifest["hash"]}
        try:
            check_signature({k: signature.get(k) for k in expected}, expected, where=where)
            artifacts.check_upstream(model_manifest, "tokenizer", tok_manifest["hash"], model_dir)
        except (ValueError, artifacts.ArtifactError) as exc:
            raise ServingError(f"tokenizer/model mismatch: {exc}. The tokenizer in {tok_dir} is not the one "
                               "this model was trained with: restore that tokenizer or retrain the model "
                               f"(s2gr train <preset> --out {run})") from None
        try:
            model_cfg = config_from_dict({"model": signature.get("model", {})}).model
        except ConfigError as exc:
            raise ServingError(f"{where}: the model config is invalid ({exc}); the file is damaged: retrain") from None
        dev = _device(device)
        model = S2GR(model_cfg, tok.level_sizes, tok.num_semantic_levels,
                     [torch.as_tensor(np.array(c)) for c in tok.coarse_centres],
                     [torch.as_tensor(np.array(m)) for m in tok.code_to_cluster],
                     max_history=signature["max_history"])
        weights = model_dir / "model.pt"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, unsafe object: all mean "damaged"
            raise ServingError(f"{weights} cannot be read ({type(exc).__name__}: {str(exc)[:200]}): the checkpoint "
                               "is corrupted or truncated; restore it from RUN/train/<run_name>/checkpoint_* or "
                               f"retrain (s2gr train <preset> --out {run})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ServingError(f"{weights} is not a state_dict of tensors; it is not an s2gr model export")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ServingError(f"{weights} does not fit the model described by {where} ({str(exc).splitlines()[0]}"
                               " ...); the files come from different runs: retrain") from None
        model.to(dev).eval()
        catalog = _read_catalog(run, tok.num_items)
        labels = cluster_labels(tok.sids, tok.code_to_cluster, [len(c) for c in tok.coarse_centres],
                                catalog["title"], catalog["category"], _popularity(run, tok.num_items))
        return cls(run, model, tok, catalog, labels, dev, model_manifest.get("hash", ""))

    # ------------------------------------------------------------------------------------- id resolution
    def _item_id(self, token: Any) -> int | None:
        try:
            value = int(token)
        except (TypeError, ValueError, OverflowError):
            return None
        if isinstance(token, float) and token != value:
            return None
        return value if 1 <= value <= self.num_items else None

    def resolve(self, history: Any, id_type: str = "auto") -> tuple[list[int], list[str], str]:
        """One history (ids, or a string of ids: see history_tokens) -> (item ids, unknown ids, id_type used).

        id_type "auto" reads the history the way under which more of its ids are known. When both readings know
        as many ids but map them to different items (numeric raw ids, e.g. MovieLens movie ids), nothing is
        guessed: the result is ([], [], "ambiguous") and ``recommend`` says to pass an explicit id_type. When neither
        reading knows any id, id_type used is "none" (every id is returned as unknown)."""
        if id_type not in ID_TYPES:
            raise ServingError(f"id_type = {id_type!r} must be one of {', '.join(ID_TYPES)}")
        tokens = history_tokens(history)
        as_item = [self._item_id(t) for t in tokens]
        as_raw = [self.raw_to_item.get(str(t).strip()) for t in tokens]
        if id_type == "auto":
            known_raw, known_item = sum(i is not None for i in as_raw), sum(i is not None for i in as_item)
            if known_raw == known_item and known_raw and as_raw != as_item:
                return [], [], AMBIGUOUS
            if not known_raw and not known_item:
                return [], [str(t) for t in tokens], UNREAD
            id_type = "raw_id" if known_raw >= known_item else "item_id"
        ids = as_raw if id_type == "raw_id" else as_item
        return [i for i in ids if i is not None], [str(t) for t, i in zip(tokens, ids) if i is None], id_type

    # ----------------------------------------------------------------------------------------- inference
    def recommend(self, histories: Sequence[Any], k: int = 10, id_type: str = "auto", beam_size: int | None = None,
                  batch_size: int = 256) -> list[Recommendation]:
        """Top-k items for each history (a list of ids, or one space-separated string of ids). Each element is one
        user: recommend(["B01", "B02"]) is two users of one item each; one user's history is recommend([["B01",
        "B02"]]) or recommend_one(["B01", "B02"])."""
        if not isinstance(histories, (Sequence, np.ndarray)) and hasattr(histories, "__iter__"):
            histories = list(histories)  # a generator or another iterable of histories
        if isinstance(histories, (str, bytes)) or (len(histories) and all(
                isinstance(h, (int, np.integer)) for h in histories)):
            raise ServingError("recommend() takes a list of histories (each a list of ids or an 'id id id' "
                               "string); for one history use recommend_one(history)")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ServingError(f"k = {k!r} must be a whole number >= 1")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ServingError(f"batch_size = {batch_size!r} must be a whole number >= 1")
        if beam_size is not None and beam_size < 1:
            raise ServingError(f"beam size (--beam-size) = {beam_size} must be >= 1; leave it out for the default "
                               f"max(k, {DEFAULT_BEAM})")
        if k > self.num_items:
            warnings.warn(f"k = {k} is more than the catalog's {self.num_items} items: each list holds at most "
                          f"{self.num_items}", stacklevel=2)
        beam = max(int(k), DEFAULT_BEAM if beam_size is None else int(beam_size))
        resolved = [self.resolve(h, id_type) for h in histories]
        results: list[Recommendation | None] = [None] * len(resolved)
        todo = []
        for i, (ids, unknown, used) in enumerate(resolved):
            if used == AMBIGUOUS:
                results[i] = Recommendation([], [], [], [], 0, used, "ambiguous ids: read as dense item ids and as the "
                                            "dataset's raw ids they name as many known items, but different ones; "
                                            "pass id_type='item_id' or 'raw_id' (--id-type)")
            elif not ids:
                why = "empty history" if not unknown else f"none of the {len(unknown)} history ids is in the catalog"
                results[i] = Recommendation([], [], [], unknown, 0, used, f"no known items: {why}")
            else:
                todo.append(i)
        # searched in batches of similar history lengths, each cut to its longest history (the output keeps the
        # callers' order): a batch costs what its users' histories need instead of its longest one's
        todo.sort(key=lambda i: len(resolved[i][0]))  # (also sorted by the kept length, min(length, max_history))
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            for i, rec in zip(rows, self._search([resolved[i][0] for i in rows], k, beam)):
                rec.unknown, rec.id_type = resolved[i][1], resolved[i][2]
                results[i] = rec
        return results  # type: ignore[return-value]

    def recommend_one(self, history: Any, k: int = 10, id_type: str = "auto",
                      beam_size: int | None = None) -> Recommendation:
        return self.recommend([history], k, id_type, beam_size)[0]

    @torch.no_grad()
    def _search(self, id_lists: list[list[int]], k: int, beam: int) -> list[Recommendation]:
        from s2gr_ray.evaluation.beam_search import constrained_beam_search
        from s2gr_ray.training.data_pipeline import pad_histories, trim_history

        ids, mask = pad_histories(id_lists, self.max_history)  # keeps the newest max_history items
        cut = trim_history({"history": ids, "history_mask": mask})  # to the longest row; the model masks padding
        ids, mask = cut["history"], cut["history_mask"]
        ids_t = torch.from_numpy(ids).long().to(self.device)
        history = self.sid_table[ids_t]  # [B, T, L]
        res = constrained_beam_search(self.model, history, torch.from_numpy(mask).to(self.device), self.trie,
                                      beam, return_paths=self.has_paths)
        items, scores = res.items[:, :k].cpu().numpy(), res.scores[:, :k].float().cpu().numpy()
        clusters = res.path_clusters[:, :k].cpu().numpy() if self.has_paths else None
        sims = res.path_sims[:, :k].float().cpu().numpy() if self.has_paths else None
        out = []
        for b, hist in enumerate(id_lists):
            keep = [j for j in range(items.shape[1]) if items[b, j] >= 1 and np.isfinite(scores[b, j])]
            recs = [RecommendedItem(
                rank=r + 1, item_id=int(items[b, j]), raw_id=self.catalog["raw_id"][items[b, j] - 1],
                title=self.catalog["title"][items[b, j] - 1], score=float(scores[b, j]),
                path=clusters[b, j].tolist() if clusters is not None else []) for r, j in enumerate(keep)]
            reasoning = []
            if clusters is not None and keep:
                top = keep[0]
                for lv in range(clusters.shape[2]):
                    for st in range(clusters.shape[3]):
                        c = int(clusters[b, top, lv, st])
                        reasoning.append(ReasoningStep(lv + 1, st + 1, c, float(sims[b, top, lv, st]),
                                                       self.labels[lv][c].label))
            kept = hist[-self.max_history:]
            out.append(Recommendation(recs, reasoning, [int(i) for i in kept], [],
                                      max(0, len(hist) - self.max_history),
                                      reason=None if recs else "the beam search found no valid item"))
        return out

    # ------------------------------------------------------------------------------------------- helpers
    def item_titles(self, item_ids: Iterable[int]) -> list[str]:
        return [self.catalog["title"][int(i) - 1] for i in item_ids]

    def label_table(self) -> list[dict]:
        """Every coarse cluster of every level with its label, words, representative titles and size."""
        return [lab.to_dict() for level in self.labels for lab in level]
