"""⑥ The per-worker training loop run by Ray Train (one process per worker).

Each epoch: stream this worker's disjoint shard of the training rows (Ray Data `get_dataset_shard`), step the
engine, then validate on this worker's shard of the validation users through the constrained beam search; the
metric sums are all-reduced once, so every rank takes the same early-stopping decision. Every rank saves its
DeepSpeed shard and reports the checkpoint (Ray merges the shards). At the end the best weights are evaluated
on the test split and reported with a checkpoint holding the exported model (`model.pt`, tensors only).
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from s2gr_ray.config import paper_view

STATE_FILE = "train_state.json"
BEST_FILE = "best_model.pt"
MODEL_FILE = "model.pt"
WARM_STEPS = 20  # train/samples_per_s_steady counts the micro-steps after these (Ray Data start-up excluded)
COMPILED_WIDTH = 4  # a compiled step sees trimmed history widths in multiples of this (fewer shapes to compile)


BATCH_TYPES = {"history": torch.long, "history_mask": torch.bool, "target_sids": torch.long, "target": torch.long,
               "history_len": torch.long}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch as the model takes it (int64 ids, a bool mask) on ``device``; ``encoder_chunks`` stays on the CPU.
    Plain copies: pinned, non-blocking ones changed nothing measurable on an H200 (benchmarks/RESULTS.md)."""
    out = {key: batch[key].to(device, dtype) for key, dtype in BATCH_TYPES.items()}
    if "encoder_chunks" in batch:
        out["encoder_chunks"] = batch["encoder_chunks"]
    return out


class TimedIter:
    """Iterates ``items`` and adds the seconds each next() took to ``seconds``: how long the training loop waited
    for its batches (Ray Data's delivery, then the collation, the local shuffle, the SID lookup and the batch layout,
    done in the loop's thread)."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._it, self.seconds = iter(items), 0.0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.seconds += time.perf_counter() - t


class StepProfiler:
    """train.profile_steps: torch.profiler over that many training steps of the first epoch a process trains, from
    step WARM_STEPS on (earlier when the epoch is shorter), then the ops by self CPU time (and by self CUDA time on a
    GPU) printed to the log, and written with a Chrome trace into ``folder`` when there is one. The bare loop of
    benchmarks/speed.py profiles the same steps with it, so the two tables compare op for op."""

    def __init__(self, steps: int, steps_per_epoch: int, device: torch.device, folder: str | Path | None = None,
                 label: str = "train") -> None:
        self.first = min(WARM_STEPS, max(steps_per_epoch - steps, 0))
        self.end = self.first + steps
        self.device, self.folder, self.label = device, folder, label
        self._prof: Any = None
        self._t0, self._profiled = 0.0, 0
        self.done = False

    def before_step(self, i: int) -> None:
        if i == self.first and not self.done:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self._sync()
            self._prof = profile(activities=activities)
            self._prof.start()
            self._t0 = time.perf_counter()

    def after_step(self, i: int) -> None:
        if self._prof is not None:
            self._profiled = i + 1 - self.first
            if i + 1 == self.end:
                self.finish()

    def finish(self) -> None:
        """Stop and report (also for an epoch that ended inside the profiled steps)."""
        if self._prof is None:
            return
        self._sync()
        wall = time.perf_counter() - self._t0
        self._prof.stop()
        steps = max(self._profiled, 1)
        tables = [f"[{self.label}] profile of steps {self.first + 1}-{self.first + steps}: {wall / steps * 1000:.1f} "
                  f"ms per step (wall, {self.device.type})"]
        for key in self.sort_keys(self.device):
            tables.append(self._prof.key_averages().table(sort_by=key, row_limit=25))
        text = "\n".join(tables)
        print(text, flush=True)
        if self.folder:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            Path(self.folder, f"profile_{self.label}.txt").write_text(text + "\n")
            self._prof.export_chrome_trace(str(Path(self.folder, f"profile_{self.label}.json")))
            print(f"[{self.label}] profile written to {self.folder} (profile_{self.label}.txt, .json: "
                  f"chrome://tracing or https://ui.perfetto.dev)", flush=True)
        self._prof, self.done = None, True

    @staticmethod
    def sort_keys(device: torch.device) -> list[str]:
        """The tables' orders: self CPU time, and on a GPU self device time (torch's name for CUDA time)."""
        return ["self_cpu_time_total"] + (["self_device_time_total"] if device.type == "cuda" else [])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def build_model(cfg, tok: dict[str, Any]):
    from s2gr_ray.model.s2gr import S2GR

    return S2GR(cfg.model, tok["level_sizes"], tok["num_semantic_levels"],
                [torch.tensor(np.asarray(c)) for c in tok["coarse_centres"]],  # copies: Ray hands read-only arrays
                [torch.tensor(np.asarray(m)) for m in tok["code_to_cluster"]], max_history=cfg.data.max_history)


def shard_eval_batches(shard, batch_size: int, mapper, share: tuple[int, int] = (0, 1)):
    """This worker's share of an evaluation split, as batches mapped to SIDs by ``mapper`` (data_pipeline.SidMapper):
    every worker reads the whole split (the driver does not split valid/test) and keeps the users with
    user_id % world == rank (``share`` = (rank, world))."""
    from s2gr_ray.training.data_pipeline import EVAL_GROUP, eval_batches

    return eval_batches(shard, batch_size, EVAL_GROUP, share, mapper=mapper)


def evaluate_shard(model, batches, trie, cfg, device) -> dict[str, float]:
    """Metric sums over evaluation batches (shard_eval_batches); aggregation across workers happens once, in the
    caller."""
    from s2gr_ray.evaluation.evaluate import evaluate_batch

    sums: dict[str, float] = {}
    model.eval()
    for batch in batches:
        part = evaluate_batch(model, _to_device(batch, device), trie, cfg.eval.beam_size, cfg.eval.ks,
                              cfg.eval.min_history_view)
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return sums


def all_reduce_sums(sums: dict[str, float], keys: list[str], device: torch.device | None = None) -> dict[str, float]:
    """Sum the metric sums over the workers. The tensor lives on ``device``: an NCCL process group (GPU training)
    reduces CUDA tensors only."""
    import torch.distributed as dist

    vec = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(vec)
    return dict(zip(keys, vec.cpu().tolist()))


def metric_keys(cfg) -> list[str]:
    """The fixed key order of the metric sums all-reduced across workers."""
    view = paper_view(cfg.eval.min_history_view)
    suffixes = [""] + ([f"_{view}"] if view else [])
    keys = []
    for sfx in suffixes:
        keys.append(f"count{sfx}")
        for k in cfg.eval.ks:
            keys += [f"recall@{k}{sfx}", f"ndcg@{k}{sfx}"]
    return keys


def hist_split(split: str, cfg) -> str:
    """The name of a split's paper view in reported metrics: valid_hist10, test_hist10 at eval.min_history_view 10."""
    return paper_view(cfg.eval.min_history_view, split)


def finalize(sums: dict[str, float], cfg) -> dict[str, dict[str, float]]:
    """{"all": {...}, "hist": {...}} — the second view is the paper's (history >= eval.min_history_view)."""
    from s2gr_ray.evaluation.evaluate import finalize_metrics

    views = finalize_metrics(sums)
    return {"all": views["all"], "hist": views.get(paper_view(cfg.eval.min_history_view), {})}


def lift_early_stop(state: dict, patience: int, max_epochs: int) -> str:
    """A resumed run that stopped early under a smaller train.patience goes on under the current one (resume may
    raise patience and train.max_epochs): its stop is re-judged on the recorded epochs without improvement. Returns
    a note when the stop is lifted, else ""."""
    if not state.get("stopped_early"):
        return ""
    state["stopped_early"] = bool(patience and state["bad_epochs"] >= patience)
    if state["stopped_early"]:
        return ""
    done = (f"the run stopped early after epoch {state['epoch']} ({state['bad_epochs']} epochs without "
            f"improvement); train.patience = {patience} lifts the stop")
    if state["epoch"] >= max_epochs:
        return f"{done}, but train.max_epochs = {max_epochs} leaves no epoch to train (raise it to train more)"
    return f"{done}: training goes on to epoch {max_epochs}"


def quiet_report_log() -> None:
    """Ray Train logs every `ray.train.report` with its whole metrics dict at INFO ("Reporting training result N:
    TrainingReport(...)", ~1.5 kB a line per epoch and rank) and every saved checkpoint ("Checkpoint successfully
    created at: Checkpoint(...)"); the worker's own epoch line already says what matters (the checkpoints live under
    the storage folder the driver names), so those two loggers (named by the file and the module in Ray 2.60) are set
    to WARNING in this process."""
    import logging

    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:  # another Ray layout: leave its logging alone
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(storage.__name__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    from s2gr_ray.config import config_from_dict
    from s2gr_ray.evaluation.trie import PrefixTrie
    from s2gr_ray.training.engine import make_engine, micro_batch_size
    from s2gr_ray.training.data_pipeline import (EpochStream, KeptBatches, SidMapper, encoder_chunks, shuffle_seed,
                                                 train_batches)

    quiet_report_log()
    cfg = config_from_dict(config["cfg"])
    tok = config["tokenizer"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.train.torch_threads or max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size()))
    torch.set_num_threads(threads)
    seed = cfg.train.seed + rank
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    micro = micro_batch_size(cfg.train, world)
    steps_per_epoch = max(1, config["train_rows"] // cfg.train.batch_size)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    mapper = SidMapper(np.asarray(tok["sids"]), cfg.data.max_history)  # the shards' rows -> SID batches, here
    # read through Ray Data at the first validation, replayed from memory after (the same users every epoch)
    valid_batches = KeptBatches(lambda: shard_eval_batches(valid_shard, cfg.eval.batch_size, mapper, (rank, world)))

    def epoch_stream(epoch: int) -> EpochStream:  # starts the epoch's Ray Data stream now, in the background
        return EpochStream(lambda: train_batches(train_shard, micro, shuffle_seed(cfg.train.seed, epoch, rank),
                                                 group=cfg.train.length_grouping,
                                                 multiple=COMPILED_WIDTH if cfg.train.compile else 1,
                                                 chunks=encoder_chunks(cfg.train), mapper=mapper))

    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "stopped_early": False, "history": []}
    ckpt = ray.train.get_checkpoint()
    if ckpt:  # every checkpoint (epoch or final) holds the engine shards, the loop state and the best weights
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
        note = lift_early_stop(state, cfg.train.patience, cfg.train.max_epochs)
        if note and rank == 0:
            print(f"[train] note: {note}", flush=True)
    # epoch 1's stream starts while the model, the engine and the trie are built (overlaps Ray Data's start-up)
    stream = epoch_stream(state["epoch"]) if not state["stopped_early"] and state["epoch"] < cfg.train.max_epochs \
        else None
    t_setup = time.time()
    model = build_model(cfg, tok)
    # the LR schedule keeps the length of the run that started it: train.max_epochs may change on resume, and a
    # schedule rebuilt to the new length would jump back up (past its end the schedule holds its final LR)
    schedule_steps = state.setdefault("schedule_steps", steps_per_epoch * cfg.train.max_epochs)
    if ckpt and rank == 0 and schedule_steps != steps_per_epoch * cfg.train.max_epochs:
        print(f"[train] note: the LR schedule keeps the first run's {schedule_steps} steps (train.max_epochs changed "
              "since); steps beyond it train at the schedule's final LR", flush=True)
    engine = make_engine(model, cfg.train, world, schedule_steps, device)
    eval_model = build_model(cfg, tok).to(device)
    trie = PrefixTrie.from_sids(tok["sids"])

    best_state: dict[str, torch.Tensor] | None = None
    if ckpt:
        with ckpt.as_directory() as d:
            best_state = torch.load(Path(d) / BEST_FILE, map_location="cpu", weights_only=True)
            engine.load(Path(d))
        if rank == 0:
            print(f"[train] resumed from checkpoint: epoch {state['epoch']}, step {engine.global_step}", flush=True)
    if rank == 0:
        print(f"[train] worker ready in {time.time() - t_setup:.1f}s (model, {cfg.train.engine} engine, trie); "
              f"{steps_per_epoch} steps per epoch, torch threads {torch.get_num_threads()}", flush=True)

    writer = None
    if rank == 0 and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])
        for k, v in config.get("tokenizer_report", {}).items():
            writer.add_scalar(f"tokenizer/{k}", v, 0)

    # failure injection for the tests: the last rank dies once at this global step (marker file = once)
    kill_at = int(os.environ.get("S2GR_TEST_KILL_AT_STEP", "0"))
    kill_marker = Path(os.environ.get("S2GR_TEST_KILL_MARKER", "/nonexistent/s2gr-kill-marker"))
    record_dir = os.environ.get("S2GR_TEST_RECORD_ROWS")  # tests: which rows each worker saw
    keys = metric_keys(cfg)
    monitor = cfg.train.monitor
    t_start = time.time()
    compiled_once = False

    first_epoch = state["epoch"]  # this process's first (train.profile_steps profiles it)
    while not state["stopped_early"] and state["epoch"] < cfg.train.max_epochs:
        epoch = state["epoch"]
        # the loss terms are summed on the device and read once per epoch: a float() per step would make the CPU
        # wait for the GPU every step, so it could not queue the next step's kernels while the GPU runs this one
        t0, seen, term_keys, term_acc, n_terms = time.time(), 0, None, None, 0
        t_warm, seen_warm = t0, 0  # throughput after the first WARM_STEPS (pipeline start-up excluded)
        assert stream is not None  # the loop condition holds exactly when a stream was started for this epoch
        batches = TimedIter(stream)
        profiler = StepProfiler(cfg.train.profile_steps, steps_per_epoch, device, config.get("tensorboard_dir")) \
            if cfg.train.profile_steps and rank == 0 and epoch == first_epoch else None
        for i, batch in enumerate(batches):
            # an epoch is steps_per_epoch whole optimizer steps: with train.grad_accum_steps > 1 the last < accum
            # micro-batches of a shard are left out, so no accumulation spans two epochs (an epoch checkpoint never
            # holds half-accumulated gradients, which a resume would drop) and the LR schedule's length holds
            if i >= steps_per_epoch * cfg.train.grad_accum_steps:
                break
            if record_dir:
                with open(Path(record_dir) / f"rank{rank}.txt", "a") as fh:
                    fh.write("".join(f"{u} {t} {h}\n" for u, t, h in zip(batch["user_id"].tolist(),
                                     batch["target"].tolist(), batch["history_len"].tolist())))
            first_compiled = cfg.train.compile and not compiled_once
            if first_compiled and rank == 0:
                print("[train] torch.compile (train.compile=true): compiling the training step, ~1 min on CPU "
                      "(once per worker) ...", flush=True)
            t_step = time.time()
            if profiler:
                profiler.before_step(i)
            terms = engine.train_step(_to_device(batch, device))
            if first_compiled:
                compiled_once = True
                if rank == 0:
                    print(f"[train] compiled in {time.time() - t_step:.0f}s", flush=True)
            if term_keys is None:
                term_keys = list(terms)
            values = torch.stack([terms[k].detach().float().reshape(()) for k in term_keys])
            term_acc = values if term_acc is None else term_acc + values
            n_terms += 1
            if profiler:
                profiler.after_step(i)
            seen += micro * world
            if i + 1 == WARM_STEPS:
                t_warm, seen_warm = time.time(), seen
            step = engine.global_step
            if kill_at and step == kill_at and rank == world - 1 and not kill_marker.exists():
                kill_marker.touch()
                os._exit(1)  # simulate a worker crash mid-epoch (tests only)
            if rank == 0 and step % cfg.train.log_every == 0 and (i + 1) % cfg.train.grad_accum_steps == 0:
                rate = seen / max(time.time() - t0, 1e-9)
                left = (steps_per_epoch * cfg.train.batch_size - seen) / max(rate, 1e-9)
                print(f"[train] epoch {epoch + 1}/{cfg.train.max_epochs} step {step} loss {float(terms['loss']):.4f} "
                      f"lr {engine.lr:.2e} {rate:,.0f} samples/s epoch ETA {max(left, 0):.0f}s", flush=True)
                if writer:
                    for k, v in terms.items():
                        writer.add_scalar(f"train/{k}", float(v), step)
                    writer.add_scalar("train/lr", engine.lr, step)
                    writer.add_scalar("train/samples_per_s", rate, step)
        if profiler:
            profiler.finish()  # an epoch shorter than the profiled steps
        term_sums = dict(zip(term_keys, term_acc.tolist())) if term_keys else {}  # waits for the epoch's last step
        epoch_time = time.time() - t0
        if world > 1 and term_keys:  # every worker's steps, not rank 0's share (equal splits: same keys and count)
            term_sums = all_reduce_sums({**term_sums, "steps": n_terms}, [*term_keys, "steps"], device)
            n_terms = int(term_sums.pop("steps"))
        train_metrics = {f"train/{k}": v / max(n_terms, 1) for k, v in term_sums.items()}
        train_metrics["train/samples_per_s"] = seen / max(epoch_time, 1e-9)
        if seen_warm and seen > seen_warm:
            train_metrics["train/samples_per_s_steady"] = (seen - seen_warm) / max(t0 + epoch_time - t_warm, 1e-9)
        train_metrics["train/epoch_seconds"] = epoch_time
        # rank 0's share of the epoch spent waiting for batches: near 0 when the model sets the pace
        train_metrics["train/input_wait_frac"] = batches.seconds / max(epoch_time, 1e-9)
        # the next epoch's stream starts now and gets going while this epoch validates (unused after an early stop)
        stream = epoch_stream(epoch + 1) if epoch + 1 < cfg.train.max_epochs else None

        snapshot = engine.state_dict_for_export()
        eval_model.load_state_dict(snapshot)
        t_eval = time.time()
        sums = all_reduce_sums(evaluate_shard(eval_model, valid_batches, trie, cfg, device), keys, device)
        valid = finalize(sums, cfg)
        value = valid["all"][monitor]
        improved = value > state["best"]
        if improved:
            state.update(best=value, best_epoch=epoch, bad_epochs=0, best_valid=valid)
            best_state = snapshot
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        stop = cfg.train.patience and state["bad_epochs"] >= cfg.train.patience
        metrics = {"epoch": epoch + 1, "step": engine.global_step, **train_metrics,
                   **{f"valid/{k}": v for k, v in valid["all"].items()},
                   **{f"{hist_split('valid', cfg)}/{k}": v for k, v in valid["hist"].items()},
                   "valid/best": state["best"], "eval_seconds": time.time() - t_eval}
        state["history"].append({k: v for k, v in metrics.items()})
        if rank == 0:
            msg = " ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in metrics.items() if k.startswith("valid/"))
            print(f"[train] epoch {epoch + 1} done in {epoch_time:.0f}s (train loss "
                  f"{train_metrics.get('train/loss', float('nan')):.4f}, waiting for input "
                  f"{train_metrics['train/input_wait_frac']:.1%}); valid {msg}"
                  f"{' (best)' if improved else ''}", flush=True)
            if writer:
                for k, v in metrics.items():
                    if k.startswith(("valid", "train/epoch", "train/input", "eval")):
                        writer.add_scalar(k if "/" in k else f"eval/{k}", v, epoch + 1)
        state["stopped_early"] = bool(stop)
        with tempfile.TemporaryDirectory() as tmp:
            _save(engine, Path(tmp), rank, state, best_state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        if stop and rank == 0:
            print(f"[train] early stop: no {monitor} improvement for {cfg.train.patience} epochs", flush=True)

    valid_batches = None  # frees the kept validation batches before the test split is read
    # ---- test with the best weights
    if best_state is None:
        best_state = engine.state_dict_for_export()
    eval_model.load_state_dict(best_state)
    test_shard = ray.train.get_dataset_shard("test")
    test_batches = shard_eval_batches(test_shard, cfg.eval.batch_size, mapper, (rank, world))
    test = finalize(all_reduce_sums(evaluate_shard(eval_model, test_batches, trie, cfg, device), keys, device), cfg)
    best_valid = state.get("best_valid") or {"all": {monitor: state["best"]}, "hist": {}}
    # the last epoch's train/* terms ride along: a sweep on metric train/loss needs it in every report (Ray Tune
    # stops the whole sweep on a result without its metric)
    last_train = {k: v for k, v in (state["history"][-1] if state["history"] else {}).items()
                  if k.startswith("train/")}
    final = {**last_train, "epoch": state["epoch"], "step": engine.global_step, "final": 1, "valid/best": state["best"],
             **{f"valid/{k}": v for k, v in best_valid["all"].items()},
             **{f"{hist_split('valid', cfg)}/{k}": v for k, v in best_valid["hist"].items()},
             "best_epoch": state["best_epoch"] + 1,
             "train_seconds": time.time() - t_start,
             **{f"test/{k}": v for k, v in test["all"].items()},
             **{f"{hist_split('test', cfg)}/{k}": v for k, v in test["hist"].items()}}
    if writer:
        for k, v in final.items():
            if k.startswith("test"):
                writer.add_scalar(k, v, state["epoch"])
        writer.close()
    with tempfile.TemporaryDirectory() as tmp:  # the final checkpoint: resumable, plus the exported model
        _save(engine, Path(tmp), rank, state, best_state)
        if rank == 0:
            torch.save(best_state, Path(tmp) / MODEL_FILE)
            (Path(tmp) / "signature.json").write_text(json.dumps(config["signature"]))
        ray.train.report(final, checkpoint=Checkpoint.from_directory(tmp))


def _save(engine, folder: Path, rank: int, state: dict, best_state: dict | None) -> None:
    """Every rank writes its engine shard; rank 0 adds the loop state and the best weights."""
    engine.save(folder, {})
    if rank == 0:
        (folder / STATE_FILE).write_text(json.dumps(state))
        torch.save(best_state, folder / BEST_FILE)
