"""CLI of the serving commands: `s2gr recommend | score | evaluate | report RUN ...` (wired in s2gr_ray/cli.py).

Each takes the run directory (RUN, the `--out` of `s2gr run/train`) as its first argument; Ray-backed commands
connect to RAY_ADDRESS / --ray-address when set, else start a local Ray (s2gr_ray.training.ray_env.init_ray).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

COMMANDS = ("recommend", "score", "evaluate", "report")
ID_HELP = ("how history ids are read: item_id (dense ids 1..N of RUN), raw_id (the dataset's own ids) or auto (per "
           "history, the reading that knows more ids; a history that both readings know equally well but as "
           "different items gets no items and the reason 'ambiguous ids'; one in which neither reading knows any "
           "id gets id_type 'none')")
BEAM_HELP = "beam width; never below --k (default max(k, 20))"


def log(msg: str, file=None) -> None:
    print(f"[s2gr {time.strftime('%H:%M:%S')}] {msg}", file=file or sys.stdout, flush=True)


def add_parsers(sub) -> None:
    """Add the serving subcommands to the `s2gr` subparsers."""
    p = sub.add_parser("recommend", help="top-K items + reasoning path for one or more histories",
                       description="Recommend for a history of item ids or the dataset's original ids.")
    p.add_argument("run", type=Path, help="trained run directory")
    p.add_argument("--history", action="append", required=True,
                   help='"id id id" oldest first (repeat the flag for several users)')
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--id-type", default="auto", choices=("auto", "item_id", "raw_id"), help=ID_HELP)
    p.add_argument("--beam-size", type=int, default=None, help=BEAM_HELP)
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("score", help="batch top-K for a users file on Ray Data (parquet shards)")
    p.add_argument("run", type=Path)
    p.add_argument("--users", required=True, help="parquet/CSV with user_id and history (list or 'id id id')")
    p.add_argument("--out", required=True, help="output folder of parquet shards: a new or empty folder, or an "
                   "earlier score output (replaced atomically, and only when some user got items); a remote "
                   "URI (s3://...) must not exist yet")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=None, help="actors (default: min(4, cores / 2))")
    p.add_argument("--id-type", default="auto", choices=("auto", "item_id", "raw_id"), help=ID_HELP)
    p.add_argument("--beam-size", type=int, default=None, help=BEAM_HELP)
    p.add_argument("--rows-per-file", type=int, default=50_000, help="users per output shard (about)")
    _ray_args(p)

    p = sub.add_parser("evaluate", help="Recall/NDCG of RUN/model on a split via Ray Data -> RUN/eval_<split>.json")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="test", choices=("valid", "test"))
    run_default = "default: the run's own eval.{} (from RUN/config.yaml), else {}"
    p.add_argument("--beam-size", type=int, default=None,
                   help=run_default.format("beam_size", "20, raised to the largest cut-off"))
    p.add_argument("--ks", default=None, help="comma-separated positive cut-offs K; default: the run's own eval.ks "
                   "(from RUN/config.yaml, else the cut-offs in RUN/metrics.json), else 5,10")
    p.add_argument("--min-history-view", type=int, default=None,
                   help="paper view: history >= this (0 = off); " + run_default.format("min_history_view", "10"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-users", type=int, default=0, help="first N users of the split (0 = all); written to "
                   "RUN/eval_<split>_first<N>.json, so a full result is never replaced by a partial one")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--json", action="store_true")
    _ray_args(p)

    p = sub.add_parser("report", help="self-contained HTML report of a run -> RUN/report.html")
    p.add_argument("run", type=Path)
    p.add_argument("--users", type=int, default=5, help="example test users shown (0 = none)")
    p.add_argument("--k", type=int, default=10, help="items shown per example user")
    p.add_argument("--out", type=Path, default=None, help="default RUN/report.html")


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 when the cluster has GPUs")
    p.add_argument("--ray-address", default="", help="Ray cluster (default RAY_ADDRESS, else a local Ray)")


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse a count flag below 1 before loading the run (0 must not quietly mean "the default")."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value} must be >= 1"
                             + ("; leave it out for the default" if name == "beam_size" else ""))


def print_recommendation(res) -> None:
    print(f"history: {len(res.history)} known item(s) as {res.id_type}"
          + (f", {res.truncated} oldest dropped (max_history)" if res.truncated else "")
          + (f"; unknown: {' '.join(res.unknown)}" if res.unknown else ""))
    if not res.items:
        print(f"no recommendations: {res.reason}")
        return
    width = max(len("item"), *(len(i.raw_id) for i in res.items))
    print(f"\n{'rank':>4}  {'item':<{width}}  {'score':>9}  title")
    for i in res.items:
        print(f"{i.rank:>4}  {i.raw_id:<{width}}  {i.score:>9.4f}  {i.title}")
    if res.reasoning:
        print("\nreasoning path (top-1): nearest coarse cluster of each thinking vector")
        print(f"{'level':>5} {'step':>4} {'cluster':>7} {'cosine':>7}  label")
        for s in res.reasoning:
            print(f"{s.level:>5} {s.step:>4} {s.cluster:>7} {s.similarity:>7.3f}  {s.label}")
    print()


def _check_actor_resources(args: argparse.Namespace) -> None:
    """--cpus-per-actor / --gpus-per-actor: Ray resources, so >= 0 (checked before Ray starts)."""
    for flag in ("cpus_per_actor", "gpus_per_actor"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            raise ValueError(f"--{flag.replace('_', '-')} {value} must be >= 0")


def run_command(args: argparse.Namespace) -> int:
    """Dispatch a serving subcommand; clear errors -> exit status 2."""
    from s2gr_ray.artifacts import ArtifactError
    from s2gr_ray.serving.api import ServingError

    try:
        if args.command == "recommend":
            from s2gr_ray.serving.api import Recommender

            _check_positive(args, "k", "beam_size")
            rec = Recommender.load(args.run, device=args.device)
            results = rec.recommend(args.history, k=args.k, id_type=args.id_type, beam_size=args.beam_size)
            if args.json:
                print(json.dumps([r.to_dict() for r in results], indent=2))
            else:
                for r in results:
                    print_recommendation(r)
            if any(not r.items for r in results):
                reasons = sorted({r.reason for r in results if not r.items})
                print(f"s2gr recommend: error: {sum(not r.items for r in results)} history(ies) gave no "
                      f"recommendations: {'; '.join(reasons)}", file=sys.stderr)
                return 2
        elif args.command == "score":
            from s2gr_ray.serving.score import default_concurrency, score_users

            _check_actor_resources(args)

            concurrency = default_concurrency() if args.concurrency is None else args.concurrency
            score_users(args.run, args.users, args.out, k=args.k, batch_size=args.batch_size,
                        concurrency=concurrency, id_type=args.id_type,
                        beam_size=args.beam_size, cpus_per_actor=args.cpus_per_actor,
                        gpus_per_actor=args.gpus_per_actor, ray_address=args.ray_address,
                        rows_per_file=args.rows_per_file, log=log)
        elif args.command == "evaluate":
            from s2gr_ray.serving.evaluate import evaluate_run, metric_table, parse_ks

            _check_actor_resources(args)

            ks = None if args.ks is None else parse_ks(args.ks)
            out = evaluate_run(args.run, args.split, beam_size=args.beam_size, ks=ks,
                               min_history_view=args.min_history_view, batch_size=args.batch_size,
                               max_users=args.max_users, concurrency=args.concurrency,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                               ray_address=args.ray_address,
                               log=functools.partial(log, file=sys.stderr) if args.json else log)
            print(json.dumps(out, indent=2) if args.json else "\n" + metric_table(out) + "\n")
        elif args.command == "report":
            from s2gr_ray.serving.report import build_report

            _check_positive(args, "k")
            if args.users < 0:
                raise ValueError(f"--users {args.users} must be >= 0 (the number of example users shown)")
            build_report(args.run, num_users=args.users, k=args.k, out=args.out, log=log)
        return 0
    except (ServingError, ArtifactError, ValueError, RuntimeError, OSError) as exc:
        from s2gr_ray.cli import _error_text

        print(f"s2gr {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 2
