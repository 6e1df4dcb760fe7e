"""Speed benchmark: training and decoding throughput, S²GR / TIGER cost ratios, catalog-size independence, and the
Ray framework tax — every figure measured in one run, with the ratios computed from that run.

    python benchmarks/speed.py                     # everything (about 20 minutes on 2 cores)
    python benchmarks/speed.py --sections train decode
    python benchmarks/speed.py --quick             # fewer steps (smoke)

Writes benchmarks/results/speed.{md,csv} and prints the table. Sections:
  train    bare torch training samples/s, batch 256, TIGER size (4+4, d 128, 6x64 heads, FFN 1024) and small size
           (2+2, d 64), S²GR (n_think 1) and TIGER (n_think 0), history_tokens code / item, fp32 and bf16 autocast;
           counted FLOPs per sample, the S²GR / TIGER FLOP ratio beside the time ratio, achieved GFLOP/s;
           also torch.compile'd (train.compile) item-token rows and their compile time (--no-compile skips them)
  attention (CPU, not in the default list) the training attention path with dropout, the project's own math vs
           scaled_dot_product_attention's CPU fallback, TIGER and S²GR at TIGER size, code tokens
  decode   constrained beam search users/s at beam 20, TIGER size, S²GR vs TIGER, 12,101-item catalog, with the
           FLOP ratio; the same pair with 100-item histories (--long-history: the encoder-dominated regime)
  beauty   the train and decode rows on Beauty's own history lengths: batches padded to their longest row, the
           default length-chunked encoder (train.encoder_chunks, exact) and length-grouped batches
           (train.length_grouping, opt-in); length-sorted vs random decode batches; needs Beauty
  catalog  decode users/s on 10,000 vs 1,000,000 items; trie build and residual assignment time for 1M items
  ray      Ray Data + Ray Train (1 worker, DeepSpeed) samples/s vs a bare in-process loop, same model and rows,
           over the whole epoch and after the first 20 steps (Ray Data start-up excluded), with the share of the
           epoch the worker waited for input; Ray Data ingest alone. On a GPU: the paper preset's model, bf16
           autocast on both sides (--ray-arms s2gr tiger); --ray-profile N: the ops of N steps in each, side by side
  memory   peak memory of `s2gr train` (a child process: driver, local Ray, worker; PSS and RSS sums) over one
           full epoch of 1x vs 10x the Beauty training rows (synthetic; --memory-scales 1 10 20 adds 20x)
On a CUDA machine the train section also reports the fraction of the card's bf16 peak (--peak-tflops), from the
counted FLOPs.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

# Ray sets OMP_NUM_THREADS in each worker (to its CPUs, at least 1) before torch loads; the training worker then sets
# torch's threads itself. The bare loops here load torch the same way, so bare and Ray rows compare like with like.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# --code DIR measures another checkout's s2gr_ray with this script (before/after comparisons on one machine)
_code = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else str(REPO)
sys.path.insert(0, _code)
sys.path.insert(1, str(REPO / "benchmarks"))

from harness import train_subprocess, wait_for_quiet  # noqa: E402
from provenance import commit as _git_commit  # noqa: E402
from s2gr_ray.config import ModelConfig  # noqa: E402
from s2gr_ray.evaluation.beam_search import constrained_beam_search  # noqa: E402
from s2gr_ray.evaluation.trie import PrefixTrie  # noqa: E402
from s2gr_ray.model.s2gr import S2GR  # noqa: E402
from s2gr_ray.model.toy import random_catalog, random_clusters  # noqa: E402

TIGER = dict(d_model=128, num_heads=6, d_head=64, d_ff=1024, encoder_layers=4, decoder_layers=4, aux_decoder_layers=2)
# the CPU Beauty preset's model (configs/beauty.yaml)
SMALL = dict(d_model=64, num_heads=4, d_head=32, d_ff=256, encoder_layers=2, decoder_layers=2, aux_decoder_layers=1)
SEM = (256, 256, 256)
ROWS: list[dict] = []


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record(section: str, name: str, value: float, unit: str, note: str = "") -> None:
    ROWS.append({"section": section, "measure": name, "value": value, "unit": unit, "note": note})
    log(f"{section:8s} {name:55s} {value:12.2f} {unit} {note}")


def make_model(size: dict, n_think: int, level_sizes, device, max_history: int = 20, **kw) -> S2GR:
    if n_think == 0:  # TIGER: no thinking, so no auxiliary decoder either
        size = {**size, "aux_decoder_layers": 0}
    cfg = ModelConfig(**size, n_think=n_think, dropout=0.1, **kw)
    centres, c2c = random_clusters(list(level_sizes[:3]), 16, 32, seed=0)
    return S2GR(cfg, level_sizes, 3, centres, c2c, max_history=max_history).to(device)


def count_flops(fn) -> float:
    """Matmul + attention FLOPs of fn() (torch's FlopCounterMode). Attention runs through the math kernels while
    counting (the fused CPU kernel and the few-query path are not counted by FlopCounterMode); same arithmetic."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from s2gr_ray.model import layers

    few = getattr(layers, "FEW_QUERIES", None)
    if few is not None:
        layers.FEW_QUERIES = 0
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        if few is not None:
            layers.FEW_QUERIES = few
    return float(counter.get_total_flops())


def batch_for(sids: np.ndarray, b: int, t: int, seed: int, device):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, len(sids), size=(b, t + 1))
    lengths = rng.integers(5, t + 1, size=b)
    history = torch.as_tensor(sids[items[:, :t]], device=device)
    mask = torch.as_tensor(np.arange(t)[None, :] < lengths[:, None], device=device)
    target = torch.as_tensor(sids[items[:, t]], device=device)
    return history, mask, target


def bench_train(args, device) -> None:
    sids, sizes = random_catalog(12101, SEM, dedup=True, seed=0)
    runs = [(label, size) for label, size in (("tiger-size", TIGER), ("small", SMALL)) if label in args.sizes]
    compile_tokens = "item" if "item" in args.tokens else args.tokens[0]  # the compiled rows' layout
    for label, size in runs:
        for tokens in args.tokens:
            flops = {}  # per sample, one forward + backward
            for arm, n_think in (("TIGER", 0), ("S2GR", 1)):
                model = make_model(size, n_think, sizes, device, history_tokens=tokens)
                batch = batch_for(sids, 32, 20, 0, device)
                flops[arm] = count_flops(lambda: model(*batch).loss.backward()) / 32
            record("train", f"{label} tokens={tokens} S2GR/TIGER FLOPs per sample", flops["S2GR"] / flops["TIGER"],
                   "ratio", f"matmul + attention FLOPs, TIGER {flops['TIGER'] / 1e6:.0f} M/sample: the time ratio "
                   "if both ran at the same FLOP/s")
            for precision in args.precisions:
                models = {arm: make_model(size, n_think, sizes, device, history_tokens=tokens)
                          for arm, n_think in (("TIGER", 0), ("S2GR", 1))}
                batches = [batch_for(sids, args.batch, 20, s, device) for s in range(3)]
                steps = args.steps if label == "tiger-size" else args.steps * 2
                rates = _interleaved_train_rates(models, batches, steps, precision, device)
                for arm, rate in rates.items():
                    record("train", f"{label} {arm} tokens={tokens} {precision}", rate, "samples/s",
                           f"batch {args.batch}, {steps} steps in {ROUNDS} rounds alternating with the other arm")
                    record("train", f"{label} {arm} tokens={tokens} {precision} achieved", flops[arm] * rate / 1e9,
                           "GFLOP/s", "counted FLOPs x samples/s")
                    if device.type == "cuda" and args.peak_tflops:
                        record("train", f"{label} {arm} tokens={tokens} {precision} fraction of bf16 peak",
                               flops[arm] * rate / (args.peak_tflops * 1e12), "", f"peak {args.peak_tflops} TFLOP/s")
                record("train", f"{label} tokens={tokens} {precision} S2GR/TIGER time per epoch",
                       rates["TIGER"] / rates["S2GR"], "ratio", "paper: 59 h / 45 h = 1.31")
                if args.compile and tokens == compile_tokens:
                    _bench_compiled(args, device, label, size, tokens, precision, sids, sizes, rates)


ROUNDS = 3  # arms of a ratio are timed in alternating rounds (A B, B A, A B): this host's speed drifts over minutes


def _train_step(model, opt, batch, precision: str, device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "amp"):
        out = model(*batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()


def _interleaved_train_rates(models: dict, batches, steps: int, precision: str, device,
                             warm: dict | None = None) -> dict[str, float]:
    """samples/s of each model's training step: 2 warm-up steps each, then `steps` timed steps per model, run in
    ROUNDS alternating rounds so a drift of the machine's speed falls on both arms alike, cycling over the batches
    (one list for every arm, or a dict arm -> list). `warm`, when given, receives each arm's warm-up seconds (for
    compiled models: the compile)."""
    per_arm = batches if isinstance(batches, dict) else dict.fromkeys(models, batches)
    opts = {arm: torch.optim.AdamW(m.parameters(), lr=1e-3) for arm, m in models.items()}
    for arm, m in models.items():
        t0 = time.perf_counter()
        for i in range(2):
            _train_step(m, opts[arm], per_arm[arm][i % len(per_arm[arm])], precision, device)
        _sync(device)
        if warm is not None:
            warm[arm] = time.perf_counter() - t0
    spent, done = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0)
    order = list(models)
    for r in range(ROUNDS):
        n = steps // ROUNDS + (1 if r < steps % ROUNDS else 0)
        for arm in (order if r % 2 == 0 else order[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            for i in range(n):
                _train_step(models[arm], opts[arm], per_arm[arm][(done[arm] + i) % len(per_arm[arm])], precision,
                            device)
            _sync(device)
            spent[arm] += time.perf_counter() - t0
            done[arm] += n
    return {arm: done[arm] * per_arm[arm][0][0].size(0) / spent[arm] for arm in models}


def _bench_compiled(args, device, label: str, size: dict, tokens: str, precision: str, sids, sizes,
                    eager: dict) -> None:
    """train.compile: the same training step under torch.compile (nn.Module.compile), against the eager rates. Both
    arms are compiled first (one dynamo cache holds both graphs), then timed in alternating rounds like the eager
    rows; the eager rates they are compared with come from the rounds just before."""
    torch._dynamo.reset()
    models = {arm: make_model(size, n_think, sizes, device, history_tokens=tokens)
              for arm, n_think in (("TIGER", 0), ("S2GR", 1))}
    for m in models.values():
        m.compile()
    batches = [batch_for(sids, args.batch, 20, s, device) for s in range(3)]
    steps = args.steps if label == "tiger-size" else args.steps * 2
    warm: dict[str, float] = {}
    compiled = _interleaved_train_rates(models, batches, steps, precision, device, warm)
    for arm, rate in compiled.items():
        record("train", f"{label} {arm} tokens={tokens} {precision} compiled", rate, "samples/s",
               f"{rate / eager[arm]:.2f}x eager; compile + 2 warm-up steps {warm[arm]:.0f}s; {steps} steps in "
               f"{ROUNDS} rounds alternating with the other arm")
    record("train", f"{label} tokens={tokens} {precision} compiled S2GR/TIGER time per epoch",
           compiled["TIGER"] / compiled["S2GR"], "ratio", "both compiled, timed in alternating rounds")
    torch._dynamo.reset()


def bench_attention(args, device) -> None:
    """The CPU training attention path (layers.Attention._attend_dropped: the project's math with its 8-bit dropout
    mask) against scaled_dot_product_attention with dropout_p, whose CPU fallback draws a per-element bernoulli mask;
    TIGER and S²GR at TIGER size, code tokens, all four models timed in alternating rounds in one process."""
    import types

    import torch.nn.functional as F

    from s2gr_ray.model.layers import Attention

    if device.type != "cpu" or not hasattr(Attention, "_attend_dropped"):
        log("attention: CPU only, and only for a checkout with Attention._attend_dropped; skipped")
        return

    def sdpa(self, q, k, v, mask, p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    sids, sizes = random_catalog(12101, SEM, dedup=True, seed=0)
    models = {}
    for arm, n_think in (("TIGER", 0), ("S2GR", 1)):
        for path in ("sdpa", "own"):
            torch.manual_seed(0)
            m = make_model(TIGER, n_think, sizes, device, history_tokens="code")
            if path == "sdpa":  # this model's attention modules take the fused kernel's dropout instead
                for mod in m.modules():
                    if isinstance(mod, Attention):
                        mod._attend_dropped = types.MethodType(sdpa, mod)
            models[f"{arm} {path}"] = m
    batches = [batch_for(sids, args.batch, 20, s, device) for s in range(3)]
    steps = max(args.steps, 8)
    rates = _interleaved_train_rates(models, batches, steps, "fp32", device)
    note = f"TIGER size, code tokens, fp32, batch {args.batch}, {steps} steps in {ROUNDS} rounds alternating over " \
           "4 models"
    for name, rate in rates.items():
        record("attention", f"{name} attention with dropout", rate, "samples/s", note)
    for arm in ("TIGER", "S2GR"):
        record("attention", f"{arm} own / sdpa dropout attention", rates[f"{arm} own"] / rates[f"{arm} sdpa"],
               "ratio", "speed-up of the CPU training path")
    for path in ("sdpa", "own"):
        record("attention", f"S2GR/TIGER time per epoch, {path} attention", rates[f"TIGER {path}"] /
               rates[f"S2GR {path}"], "ratio", "paper: 59 h / 45 h = 1.31")


def bench_decode(args, device) -> None:
    sids, sizes = random_catalog(12101, SEM, dedup=True, seed=0)
    trie = PrefixTrie.from_sids(sids).to(device)
    for tokens in ("code", "item"):
        _decode_pair(f"tokens={tokens}", dict(history_tokens=tokens), 20, args.decode_users, sids, sizes, trie,
                     args, device)
    # The paper's 0.90 h / 0.88 h is a regime where the encoder dominates (long industrial histories): the thinking
    # steps add decoder work only, a fixed amount per beam, so the ratio falls as histories grow.
    t = args.long_history
    _decode_pair(f"tokens=code, {t}-item histories", dict(history_tokens="code"), t, max(16, args.decode_users // 4),
                 sids, sizes, trie, args, device)


def _decode_pair(label: str, kw: dict, history: int, users: int, sids, sizes, trie, args, device) -> None:
    """Both arms' decode rates, timed A B B A (each arm decodes the users twice) against this host's drift."""
    models, flops = {}, {}
    for arm, n_think in (("TIGER", 0), ("S2GR", 1)):
        models[arm] = make_model(TIGER, n_think, sizes, device, max_history=history, **kw).eval()
        h, m, _ = batch_for(sids, 8, history, 3, device)
        flops[arm] = count_flops(lambda: constrained_beam_search(models[arm], h, m, trie, args.beam)) / 8
    seconds = dict.fromkeys(models, 0.0)
    for arm in ("TIGER", "S2GR", "S2GR", "TIGER"):
        seconds[arm] += users / _decode_rate(models[arm], sids, trie, args, device, users=users, history=history)
    rates = {arm: 2 * users / seconds[arm] for arm in models}
    for arm in models:
        record("decode", f"tiger-size {arm} {label} beam {args.beam}", rates[arm], "users/s",
               f"12,101 items, {flops[arm] / 1e6:.0f} MFLOP/user; {users} users twice, A B B A")
    record("decode", f"{label} S2GR/TIGER FLOPs per user", flops["S2GR"] / flops["TIGER"], "ratio",
           "matmul + attention FLOPs: the time ratio if both ran at the same FLOP/s")
    record("decode", f"{label} S2GR/TIGER decode time", rates["TIGER"] / rates["S2GR"], "ratio",
           "paper: 0.90 h / 0.88 h = 1.02 (target <= 1.1)")


def _decode_rate(model, sids, trie, args, device, users: int | None = None, history: int = 20) -> float:
    users = users or args.decode_users
    history, mask, _ = batch_for(sids, users, history, 7, device)
    bs = args.decode_batch
    constrained_beam_search(model, history[:bs], mask[:bs], trie, args.beam)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for s in range(0, users, bs):
        res = constrained_beam_search(model, history[s:s + bs], mask[s:s + bs], trie, args.beam)
    _sync(device)
    seconds = time.perf_counter() - t0  # the validity check below is not decoding
    assert bool(trie.contains(res.sids.view(-1, res.sids.size(-1))).all())
    return users / seconds


def bench_catalog(args, device) -> None:
    rates = {}
    for n in (10_000, 1_000_000):
        t0 = time.perf_counter()
        sids, sizes = random_catalog(n, SEM, dedup=True, seed=1)
        t_cat = time.perf_counter() - t0
        t0 = time.perf_counter()
        trie = PrefixTrie.from_sids(sids).to(device)
        record("catalog", f"trie build, {n:,} items", time.perf_counter() - t0, "s", f"catalog gen {t_cat:.1f}s")
        model = make_model(TIGER, 1, [*SEM, int(sids[:, 3].max()) + 1], device).eval()
        rates[n] = _decode_rate(model, sids, trie, args, device)
        record("catalog", f"S2GR decode, {n:,} items, beam {args.beam}", rates[n], "users/s")
    record("catalog", "decode time per user 1M / 10k items", rates[10_000] / rates[1_000_000], "ratio",
           "target <= 1.5")
    from s2gr_ray.tokenizer.assign import dedup_codes, residual_assign

    x = torch.randn(1_000_000, 32)
    books = [torch.randn(256, 32) for _ in range(3)]
    t0 = time.perf_counter()
    codes, _, _ = residual_assign(x, books)
    dedup_codes(codes, True, 4096)
    record("catalog", "residual assignment + dedup, 1,000,000 items (d 32, 3x256)", time.perf_counter() - t0, "s")


def beauty_rows(args, split: str):
    """(item-id histories as a pyarrow list column, targets) of one split of prepared Beauty shards, or None.
    --beauty-run names a prepared run directory; else Beauty is prepared from S2GR_BEAUTY_PATH into a temp folder
    (once per process)."""
    import tempfile

    import pyarrow.parquet as pq

    run = Path(args.beauty_run) if args.beauty_run else None
    if run is None:
        data = Path(os.environ.get("S2GR_BEAUTY_PATH", str(REPO.parent / "shared" / "data" / "amazon-beauty")))
        if not (data / "sequences.txt").exists():
            return None
        if not getattr(args, "_beauty_prepared", None):
            from s2gr_ray.config import load_config
            from s2gr_ray.data.prepare import prepare_stage

            work = Path(tempfile.mkdtemp(prefix="s2gr-speed-beauty-"))
            prepare_stage(load_config(None, ["data.format=sequences", f"data.path={data}"]), work, log)
            args._beauty_prepared = work
        run = args._beauty_prepared
    files = sorted((run / "sequences" / split).glob("part-*.parquet"))
    if not files:
        raise SystemExit(f"--beauty-run {run}: no sequences/{split}/part-*.parquet (run `s2gr prepare` there)")
    import json

    table = pq.read_table(files, columns=["user_id", "history", "target", "history_len"])
    return table, int(json.loads((run / "manifest.json").read_text())["num_items"])


def bench_beauty(args, device) -> None:
    """Training and decoding on Beauty's own history lengths (training rows average 6.7 of 20 items), the same rows
    and models three ways, timed in alternating rounds: batches padded to their longest row (20 items in nearly every
    random batch: the cost before train.encoder_chunks); the default, rows sorted by length within each batch and
    encoded in train.encoder_chunks blocks cut to their own widths (exact); and length-grouped batches
    (train.length_grouping, opt-in: it changes which rows share a batch). SIDs are random codes over Beauty's item
    count (speed does not depend on which codes)."""
    from s2gr_ray.training.data_pipeline import (CPU_ENCODER_CHUNKS, SidMapper, length_chunks, length_grouped,
                                                 split_by_length, trim_history)

    found = beauty_rows(args, "train")
    if found is None:
        log("beauty: skipped (no Beauty data: set S2GR_BEAUTY_PATH or pass --beauty-run)")
        return
    table, n_items = found
    sids, sizes = random_catalog(n_items, SEM, dedup=True, seed=0)
    mapper = SidMapper(sids, 20)
    group, chunks = args.beauty_group, CPU_ENCODER_CHUNKS
    rows = np.random.default_rng(0).permutation(table.num_rows)[:args.batch * group * args.beauty_groups]
    padded = [trim_history(mapper(table.take(rows[i:i + args.batch]))) for i in range(0, len(rows), args.batch)]
    chunked = [length_chunks(b, chunks) for b in padded]
    grouped = [trim_history(b) for b in length_grouped(padded, group, seed=0)]
    width = {"padded": np.mean([b["history_mask"].shape[1] for b in padded]),
             "chunked": np.mean([np.mean(b["encoder_chunks"][:, 1]) for b in chunked]),
             "grouped": np.mean([b["history_mask"].shape[1] for b in grouped])}

    def on_device(batches):
        return [(torch.as_tensor(b["history"], device=device).long(), torch.as_tensor(b["history_mask"], device=device),
                 torch.as_tensor(b["target_sids"], device=device).long(),
                 *([[tuple(c) for c in b["encoder_chunks"].tolist()]] if "encoder_chunks" in b else []))
                for b in batches]

    layouts = {"padded": on_device(padded), "chunked": on_device(chunked), "grouped": on_device(grouped)}
    what = {"padded": "padded to the batch's longest row",
            "chunked": f"encoder in {chunks} length-sorted row blocks (CPU default)",
            "grouped": f"length-grouped over {group} batches + trimmed"}
    steps = len(padded)
    for label, size in (("tiger-size", TIGER), ("small", SMALL)):
        if label not in args.sizes:
            continue
        for tokens in args.tokens:
            for precision in args.precisions:
                models, batches = {}, {}
                for arm, n_think in (("TIGER", 0), ("S2GR", 1)):
                    torch.manual_seed(0)
                    base = make_model(size, n_think, sizes, device, history_tokens=tokens)
                    for lay, bs in layouts.items():
                        models[f"{arm} {lay}"] = base if lay == "padded" else copy.deepcopy(base)
                        batches[f"{arm} {lay}"] = bs
                rates = _interleaved_train_rates(models, batches, steps, precision, device)
                for arm in ("TIGER", "S2GR"):
                    for lay in layouts:
                        gain = rates[f"{arm} {lay}"] / rates[f"{arm} padded"]
                        record("beauty", f"{label} {arm} tokens={tokens} {precision} {what[lay]}",
                               rates[f"{arm} {lay}"], "samples/s",
                               (f"batch {args.batch}, {steps} Beauty batches; " if lay == "padded" else
                                f"{gain:.2f}x padded; ") + f"mean encoded width {width[lay]:.1f} items")
                for lay in ("chunked", "grouped"):
                    record("beauty", f"{label} tokens={tokens} {precision} S2GR/TIGER time, {lay}",
                           rates[f"TIGER {lay}"] / rates[f"S2GR {lay}"], "ratio", "target <= 1.3")
    # decoding the test users: random batches (padded to 20) against length-sorted batches, trimmed
    test, _ = beauty_rows(args, "test")
    users = min(args.decode_users * 4, test.num_rows)
    pick = test.take(np.random.default_rng(1).permutation(test.num_rows)[:users])
    bs = args.decode_batch
    plain = [mapper(pick.slice(i, bs)) for i in range(0, users, bs)]
    merged = mapper(pick)
    by_length = [trim_history(b) for b in split_by_length(merged, -(-users // bs), np.random.default_rng(0))]
    trie = PrefixTrie.from_sids(sids).to(device)
    for arm, n_think in (("TIGER", 0), ("S2GR", 1)):
        torch.manual_seed(0)
        model = make_model(TIGER, n_think, sizes, device, history_tokens="code").eval()
        rates = {}
        for lay in ("padded", "sorted", "sorted", "padded"):  # A B B A against drift
            parts = plain if lay == "padded" else by_length
            ready = on_device(parts)  # built (and copied to the device) before the timer: decoding only
            constrained_beam_search(model, *ready[0][:2], trie, args.beam)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for h, m, _ in ready:
                constrained_beam_search(model, h, m, trie, args.beam)
            _sync(device)
            rates[lay] = rates.get(lay, 0.0) + time.perf_counter() - t0
        for lay in ("padded", "sorted"):
            note = (f"{users} Beauty test users twice, batch {bs}, A B B A" if lay == "padded" else
                    f"{rates['padded'] / rates['sorted']:.2f}x padded; length-sorted batches trimmed to their longest "
                    "row (s2gr evaluate, the per-epoch validation, recommend() and s2gr score do this)")
            record("beauty", f"tiger-size {arm} tokens=code decode beam {args.beam}, "
                   f"{'random batches padded to 20' if lay == 'padded' else 'length-sorted + trimmed'}",
                   2 * users / rates[lay], "users/s", note)


RAY_ENGINES = {"zero0": ("DeepSpeed ZeRO-0", ["train.zero_stage=0"]),
               "zero2": ("DeepSpeed ZeRO-2", ["train.zero_stage=2"]),
               "ddp": ("torch DDP", ["train.engine=ddp"])}
RAY_ARMS = {"s2gr": [], "tiger": ["model.n_think=0", "model.aux_decoder_layers=0"]}


def bench_ray(args, device) -> None:
    """Same model, same rows: Ray Data + Ray Train (1 worker, DeepSpeed ZeRO-0 / ZeRO-2 / torch DDP) vs a bare
    loop, per arm (--ray-arms). On the CPU: the CPU preset's model with item tokens, fp32. On a GPU: the paper
    preset's (TIGER sizes, code tokens), bf16 autocast on both sides (train.precision=amp), batches sent as the
    worker sends them."""
    import json
    import tempfile

    from s2gr_ray.config import load_config
    from s2gr_ray.data.prepare import prepare_stage
    from s2gr_ray.training.driver import train_stage
    from s2gr_ray.training.worker import WARM_STEPS

    work = Path(tempfile.mkdtemp(prefix="s2gr-speed-"))
    data = os.environ.get("S2GR_BEAUTY_PATH", str(REPO.parent / "shared" / "data" / "amazon-beauty"))
    base = ["data.format=sequences", f"data.path={data}"] if Path(data, "sequences.txt").exists() else []
    steps = args.ray_steps
    gpu = device.type == "cuda"
    size, layout = (TIGER, "code") if gpu else (SMALL, "item")
    common = base + [*(f"model.{k}={v}" for k, v in size.items()), "train.batch_size=256", "train.max_epochs=1",
                     f"train.max_steps_per_epoch={steps}", "eval.max_users=256", "eval.beam_size=10",
                     "train.log_every=1000", "train.cpus_per_worker=1", f"model.history_tokens={layout}"]
    if gpu:
        common += ["train.use_gpu=true", "train.precision=amp"]
    if args.ray_profile:
        common.append(f"train.profile_steps={args.ray_profile}")  # the worker's and the bare loop's tables
    cfg = load_config(None, common)
    prepare_stage(cfg, work, log)
    sids, sizes = random_catalog(json.loads((work / "manifest.json").read_text())["num_items"], SEM, seed=0)
    _write_tokenizer(work, sids, sizes, cfg)
    from s2gr_ray.tokenizer.sid import SIDTokenizer
    from s2gr_ray.training.data_pipeline import SidMapper, build_datasets, encoder_chunks, train_batches

    tok = SIDTokenizer.load(work / "tokenizer")
    # this host's speed drifts by up to ~20% over minutes: each Ray run is bracketed by bare runs (bare, Ray A, bare,
    # Ray B, bare, ...) and compared with the mean of the two bare runs right before and after it. Every bare run is
    # made with the local Ray already up, as the Ray runs are. (The first bare run, before any Ray run, was the
    # fastest in every full run so far, which made whichever engine came first look slowest: speed_ray_reorder.md.)
    from s2gr_ray.training.ray_env import init_ray

    init_ray(cfg.ray, cfg.train.use_gpu, log)
    what = f"{'paper preset size, code tokens, bf16 autocast' if gpu else 'CPU preset size'}, {steps} steps"
    for arm in dict.fromkeys(args.ray_arms):
        arm_cfg = common + RAY_ARMS[arm]
        bare_cfg = load_config(None, arm_cfg)
        settled = [_settle()]
        bare_runs = [_bare_loop(bare_cfg, work, steps, device)]
        ray_rates, steady, waits = {}, {}, {}
        # ZeRO-2 is the config default; with one worker it has nothing to partition. DDP: the torch engine, no
        # DeepSpeed
        engines = dict(RAY_ENGINES[key] for key in dict.fromkeys(args.engines))  # in the order given
        for i, (engine, extra) in enumerate(engines.items()):
            settled.append(_settle())
            t0 = time.perf_counter()
            metrics = train_stage(load_config(None, arm_cfg + extra + [f"train.run_name={arm}{i}"]), work, log)
            first = metrics["history"][0]
            ray_rates[engine], waits[engine] = first["train/samples_per_s"], first.get("train/input_wait_frac")
            steady[engine] = first.get("train/samples_per_s_steady", float("nan"))
            record("ray", f"Ray Data + Ray Train, 1 worker, {engine}, {arm}, {what}", ray_rates[engine],
                   "samples/s", f"whole epoch; after the first {WARM_STEPS} steps: {steady[engine]:.0f}; waiting "
                   f"for input {waits[engine] or 0:.1%} of the epoch; run wall {time.perf_counter() - t0:.0f}s")
            settled.append(_settle())
            bare_runs.append(_bare_loop(bare_cfg, work, steps, device))
        record("ray", f"bare in-process torch loop, {arm}, same model and rows, {steps} steps",
               float(np.mean([r[0] for r in bare_runs])), "samples/s",
               f"mean of {len(bare_runs)} runs around the Ray runs, all with the local Ray up: "
               + " / ".join(f"{r[0]:.0f}" for r in bare_runs)
               + f"; every run waited for a quiet machine first ({', '.join(f'{w:.0f}' for w in settled)} s)")
        for i, (engine, rate) in enumerate(ray_rates.items()):
            around = bare_runs[i:i + 2]
            whole, warm = (float(np.mean([r[k] for r in around])) for k in (0, 1))
            record("ray", f"Ray ({engine}) / bare samples/s, {arm}, whole epoch", rate / whole, "ratio",
                   f"target >= 0.95; against the bare runs right before and after ({around[0][0]:.0f} / "
                   f"{around[1][0]:.0f}); Ray's epoch includes Ray Data start-up")
            record("ray", f"Ray ({engine}) / bare samples/s, {arm}, after the first {WARM_STEPS} steps",
                   steady[engine] / warm if warm > 0 else float("nan"), "ratio", "target >= 0.95")
    # the Ray path's ceiling: the same Ray Data pipeline and batch iteration as the worker's, with no model
    ds = build_datasets(work, None, cfg.data.max_history, splits=("train",))["train"]
    t0, n = time.perf_counter(), 0
    for b in train_batches(ds, 256, chunks=encoder_chunks(cfg.train), mapper=SidMapper(tok.sids, cfg.data.max_history)):
        n += len(b["target"])
        if n >= steps * 256:
            break
    record("ray", f"Ray Data ingest alone, same pipeline and iteration, no model, {steps} batches",
           n / (time.perf_counter() - t0), "samples/s", "the Ray path's ceiling (in the driver, start-up included)")


def _settle() -> float:
    """Wait (up to 60 s) for a quiet machine; the seconds waited. Right after a Ray run, `top` showed three
    `ray::IDLE` worker processes at 50-80% of a core each during the bare run that followed (2026-11-29), and the
    bare reference drifted down over the section (1922, 1589, 1446, 1334 samples/s)."""
    return wait_for_quiet(60.0, 10.0, log)[1]


def _bare_loop(cfg, work: Path, steps: int, device=torch.device("cpu")) -> tuple[float, float]:
    """(samples/s, samples/s after WARM_STEPS) of a bare loop over the same parquet rows and the same model, with the
    engines' forward (train.precision) and the worker's batch layout and copies to ``device``; with
    train.profile_steps, the same steps as the worker's profiled (the table in the log)."""
    import pyarrow.parquet as pq

    from s2gr_ray import artifacts
    from s2gr_ray.training.data_pipeline import SidMapper, _to_torch, encoder_chunks, length_chunks, trim_history
    from s2gr_ray.training.driver import load_tokenizer_payload
    from s2gr_ray.training.engine import _forward
    from s2gr_ray.training.worker import WARM_STEPS, StepProfiler, _to_device, build_model

    torch.manual_seed(0)
    payload, _ = load_tokenizer_payload(work, artifacts.read_manifest(work, "data"))  # what the driver ships
    model = build_model(cfg, payload).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mapper = SidMapper(payload["sids"], cfg.data.max_history)
    files = sorted((work / "sequences" / "train").glob("*.parquet"))
    t0, seen, step = time.perf_counter(), 0, 0
    t_warm, seen_warm = t0, 0
    batches = (batch for f in files for batch in pq.ParquetFile(f).iter_batches(
        batch_size=256, columns=["user_id", "history", "target", "history_len"]))
    chunks = encoder_chunks(cfg.train)
    profiler = StepProfiler(cfg.train.profile_steps, steps, device, label="bare") if cfg.train.profile_steps else None
    for batch in batches:
        # the worker's batch layout (data_pipeline.train_batches): trimmed, length-chunked encoder on CPU
        b = _to_device(_to_torch(length_chunks(trim_history(mapper(batch)), chunks)), device)
        if profiler:
            profiler.before_step(step)
        out = _forward(model, b, cfg.train.precision)  # bf16 autocast for "amp", plain fp32 for any other
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)  # as the engines do
        opt.step()
        if profiler:
            profiler.after_step(step)
        seen += len(b["target"])
        step += 1
        if step == WARM_STEPS:
            _sync(device)
            t_warm, seen_warm = time.perf_counter(), seen
        if seen >= steps * 256:
            break
    _sync(device)
    t_end = time.perf_counter()
    rates = seen / (t_end - t0), (seen - seen_warm) / (t_end - t_warm)
    log(f"bare loop: {rates[0]:.0f} samples/s (after the first {WARM_STEPS} steps: {rates[1]:.0f})")
    return rates


def _tree_memory(root) -> list[tuple[str, int, int]]:
    """(command, RSS, PSS) of `root` and its descendants; PSS splits each shared page between the processes mapping
    it (Ray's object store, the libraries every worker maps), so its sum counts shared memory once."""
    import psutil

    rows = []
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            command = " ".join(" ".join(p.cmdline()).split())  # one line (a `python -c` child's code has several)
            rows.append((command[:60] or p.name(), info.rss, getattr(info, "pss", info.rss)))
        except psutil.Error:
            pass
    return rows


def bench_memory(args, device) -> None:
    """Peak memory of `s2gr train` (its driver process, the local Ray it starts, the worker) over one full epoch of
    1x vs 10x the Beauty training rows (synthetic sequences, same catalog size): streaming keeps it flat. The data
    is prepared here and trained in a child process, a fresh driver as `s2gr train` runs (prepare's leftovers in
    this process would count otherwise). Reported as the sum of RSS (shared pages counted in every process that maps
    them) and the sum of PSS (each shared page split between the processes that map it, so the tree's pages count
    about once); the processes using the most at the PSS peak are logged."""
    import json
    import tempfile

    import psutil

    from s2gr_ray.config import load_config
    from s2gr_ray.data.prepare import prepare_stage

    if "ray" in sys.modules:  # an earlier section's local Ray: its processes would share pages with the child's
        import ray

        ray.shutdown()
    peaks = {}
    for scale in args.memory_scales:
        work = Path(tempfile.mkdtemp(prefix=f"s2gr-mem{scale}-"))
        users = 16_500 * scale  # ~8 training rows per synthetic user: 1x ~ Beauty's 131k training rows
        over = [
            "data.format=synthetic", f"data.synthetic.num_users={users}", "data.synthetic.num_items=12101",
            "data.synthetic.num_top_categories=16", "data.synthetic.num_sub_categories=16",
            "model.d_model=32", "model.num_heads=2", "model.d_head=16", "model.d_ff=64", "model.encoder_layers=1",
            "model.decoder_layers=1", "model.aux_decoder_layers=1", "model.history_tokens=item",
            "train.batch_size=2048", "train.max_epochs=1", "train.zero_stage=0", "train.log_every=100000",
            "train.cpus_per_worker=1", "eval.max_users=512", "eval.beam_size=10", f"train.run_name=mem{scale}",
            *args.memory_set]
        cfg = load_config(None, over)
        prepare_stage(cfg, work, log)
        manifest = json.loads((work / "manifest.json").read_text())
        sids, sizes = random_catalog(manifest["num_items"], SEM, seed=0)
        _write_tokenizer(work, sids, sizes, cfg)
        peak = {"rss": 0, "pss": 0, "at": []}

        def sample(child, peak=peak) -> None:
            try:
                rows = _tree_memory(psutil.Process(child.pid))
            except psutil.Error:  # it has just ended
                return
            peak["rss"] = max(peak["rss"], sum(r[1] for r in rows))
            if sum(r[2] for r in rows) > peak["pss"]:
                peak["pss"], peak["at"] = sum(r[2] for r in rows), rows
            time.sleep(0.25)

        # OMP_NUM_THREADS unset, as `s2gr train` starts: Ray sets each worker's threads
        t0 = time.perf_counter()
        try:
            metrics = train_subprocess(work, over, env={"OMP_NUM_THREADS": None}, code=_code, watch=sample,
                                       log_path=work / "train.log")
        except SystemExit as e:
            raise RuntimeError(f"memory section: training {scale}x failed: {e}") from None
        rate = metrics["history"][0]["train/samples_per_s"]
        peak_rss, peak_pss, at_peak = peak["rss"], peak["pss"], peak["at"]
        rows = manifest["splits"]["train"]
        peaks[scale] = (peak_rss / 2**30, peak_pss / 2**30)
        log(f"memory {scale}x: the processes using the most at the PSS peak (MiB RSS / PSS):")
        for cmd, rss, pss in sorted(at_peak, key=lambda r: -r[2])[:6]:
            log(f"    {rss / 2**20:7.0f} / {pss / 2**20:7.0f}  {cmd}")
        when = f"child {time.perf_counter() - t0:.0f}s (start-up, Ray, epoch, validation, test), {rate:.0f} samples/s"
        record("memory", f"peak PSS of s2gr train, {rows:,} training rows ({scale}x)", peaks[scale][1], "GiB",
               f"driver + local Ray + worker; pages shared with other processes split with them; {when}")
        record("memory", f"peak RSS sum of s2gr train, {rows:,} training rows ({scale}x)", peaks[scale][0], "GiB",
               "the same processes, shared pages counted in each")
    first = args.memory_scales[0]
    for scale in args.memory_scales[1:]:
        record("memory", f"peak PSS {scale}x / {first}x rows", peaks[scale][1] / peaks[first][1], "ratio",
               "target ~1 (streaming)")
        record("memory", f"peak RSS sum {scale}x / {first}x rows", peaks[scale][0] / peaks[first][0], "ratio", "")


def _write_tokenizer(run: Path, sids, sizes, cfg) -> None:
    from s2gr_ray import artifacts
    from s2gr_ray.tokenizer.sid import SIDTokenizer

    centres, c2c = random_clusters(list(sizes[:3]), 16, 32, seed=0)
    tok = SIDTokenizer(sids=sids, level_sizes=list(sizes), num_semantic_levels=3,
                       codebooks=[np.random.default_rng(0).normal(size=(c, 32)).astype(np.float32) for c in sizes[:3]],
                       coarse_centres=[c.numpy() for c in centres], code_to_cluster=[m.numpy() for m in c2c],
                       report={}, config={})
    tok.save(run / "tokenizer")
    data = artifacts.read_manifest(run, "data")
    artifacts.write_manifest(run / "tokenizer", "tokenizer", "random", {"data": data["hash"]},
                             num_items=len(sids), level_sizes=list(sizes))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_results(args) -> None:
    out = REPO / "benchmarks" / "results"
    if not ROWS:
        raise SystemExit(f"no measurement was recorded (see the lines above); {out / f'speed{args.tag}.md'} is left as "
                         "it was")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"speed{args.tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    commit = _git_commit(REPO)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    lines = ["# Speed benchmark", "", f"- date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
             f"device: {device}, torch threads {torch.get_num_threads()}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} (as in a Ray worker)",
             f"- command: `python benchmarks/speed.py {' '.join(sys.argv[1:])}`"
             + (f" (s2gr_ray from {args.code} at commit {_git_commit(args.code)})" if args.code != str(REPO) else ""),
             "",
             "| section | measure | value | unit | note |", "|---|---|---:|---|---|"]
    lines += [f"| {r['section']} | {r['measure']} | {r['value']:.2f} | {r['unit']} | {r['note']} |" for r in ROWS]
    (out / f"speed{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["train", "beauty", "decode", "catalog", "ray", "memory"],
                   choices=["train", "attention", "beauty", "decode", "catalog", "ray", "memory"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tokens", nargs="+", default=["code", "item"], choices=["code", "item"],
                   help="history_tokens layouts of the train section (compiled rows: item, else the first)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "amp"], choices=["fp32", "amp"])
    p.add_argument("--sizes", nargs="+", default=["tiger-size", "small"], choices=["tiger-size", "small"],
                   help="model sizes of the train section")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--decode-users", type=int, default=256)
    p.add_argument("--decode-batch", type=int, default=128)
    p.add_argument("--long-history", type=int, default=100, help="history length (items) of the long-history "
                   "decode pair (the encoder-dominated regime of the paper's cost figure)")
    p.add_argument("--ray-steps", type=int, default=300)
    p.add_argument("--engines", nargs="+", default=list(RAY_ENGINES), choices=list(RAY_ENGINES),
                   help="training engines of the ray section, run in this order (each against the same bare loop)")
    p.add_argument("--ray-arms", nargs="+", default=["s2gr"], choices=list(RAY_ARMS),
                   help="arms of the ray section, each with its own bare runs")
    p.add_argument("--ray-profile", type=int, default=0, metavar="N",
                   help="profile N steps from step 20 in every Ray run and bare loop of the ray section "
                        "(train.profile_steps: tables of ops by self CPU / CUDA time in the log; slower runs)")
    p.add_argument("--beauty-run", default="", help="a prepared run directory (sequences/) for the beauty section; "
                   "default: prepare Beauty from S2GR_BEAUTY_PATH / ../shared/data/amazon-beauty")
    p.add_argument("--beauty-group", type=int, default=8, help="train.length_grouping of the beauty section")
    p.add_argument("--beauty-groups", type=int, default=2, help="groups of batches timed per arm (beauty section)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile rows of the train section (each compile takes ~1 min on 2 cores)")
    p.add_argument("--memory-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for the memory section's runs (e.g. train.ingest_buffer_mb=0)")
    p.add_argument("--memory-scales", nargs="+", type=int, default=[1, 10], metavar="N",
                   help="the memory section's row counts as multiples of Beauty's training rows, each against the "
                        "first (default 1 10; 1 10 20 shows whether the peak stops growing)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. _gpu)")
    p.add_argument("--code", default=str(REPO), help="a checkout whose s2gr_ray is measured (default: this one)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.decode_users, args.ray_steps, args.beauty_groups = 2, 64, 30, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    for section in args.sections:
        globals()[f"bench_{section}"](args, device)
    write_results(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
