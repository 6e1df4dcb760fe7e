"""The cost of starting an epoch's Ray Data stream, by parquet reader, in training runs made one after another.

    python benchmarks/epoch_stream.py                      # configs/quickstart.yaml, both orders, ~10 min on 2 cores
    python benchmarks/epoch_stream.py --rounds 1           # one run per variant
    python benchmarks/epoch_stream.py --config configs/quickstart.yaml train.max_epochs=4

Every epoch re-executes the training dataset's plan. With Ray Data's newer parquet path (Ray's default,
RAY_DATA_USE_DATASOURCE_V2=1) each execution lists the shards again and reads their footers on a pool of actors it
starts for the purpose; with the file-based reader (s2gr's default, s2gr_ray.training.data_pipeline.read_shards) the
footers are read once when the dataset is planned. The worker starts epoch N+1's stream before it validates epoch N
(EpochStream), so that start-up shows up in the validation time of the middle epochs, and what it does not hide in
the next epoch's training time. This benchmark trains the same prepared run with each reader (each run in its own
process and local Ray; with --rounds 2 the second round runs them in the reverse order) and tabulates, per run, the
mean training and validation seconds of the middle epochs (2..N-1: the first epoch's stream starts while the model
is built, the last epoch starts none), their sum, Ray Train's fit time, and the test metrics (each reader must give
the same ones in every round). Writes benchmarks/results/epoch_stream{tag}.{md,csv}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_replay import prepare, write_csv  # noqa: E402
from harness import train_subprocess  # noqa: E402
from provenance import commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# variant -> RAY_DATA_USE_DATASOURCE_V2 in its run's environment (None: unset, the project's choice)
VARIANTS = {"ray_v2": "1", "file_based": None}


def summarize(variant: str, rnd: int, out: dict) -> dict:
    hist = out["history"]
    middle = hist[1:-1] or hist  # epochs 2..N-1
    train_s = [h["train/epoch_seconds"] for h in middle]
    eval_s = [h["eval_seconds"] for h in middle]
    return {"variant": variant, "round": rnd, "epochs": len(hist),
            "train_s_middle": round(statistics.mean(train_s), 2), "valid_s_middle": round(statistics.mean(eval_s), 2),
            "epoch_s_middle": round(statistics.mean(t + e for t, e in zip(train_s, eval_s)), 2),
            "valid_s_last": round(hist[-1]["eval_seconds"], 2),
            "fit_s": round(out["train"]["seconds"], 1),
            "test_ndcg@10": round(out["test"].get("ndcg@10", float("nan")), 6)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--rounds", type=int, default=2, help="rounds of both readers; even rounds reverse the order")
    p.add_argument("--tag", default="")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value), applied to every run")
    args = p.parse_args()
    rows, tests = [], {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="s2gr-epoch-stream-") as tmp:
        run = Path(tmp) / "run"
        print(f"[epoch_stream] preparing {args.config} in {run}", flush=True)
        prepare(run, args.overrides, args.config)
        for rnd in range(1, args.rounds + 1):
            order = list(VARIANTS) if rnd % 2 else list(VARIANTS)[::-1]
            for variant in order:
                print(f"[epoch_stream] round {rnd}: {variant} reader", flush=True)
                over = [*args.overrides, f"train.run_name={variant}_{rnd}"]
                out = train_subprocess(run, over, args.config, {"RAY_DATA_USE_DATASOURCE_V2": VARIANTS[variant]})
                rows.append(summarize(variant, rnd, out))
                tests[variant].append(out["test"])
                print(f"[epoch_stream]   {rows[-1]}", flush=True)
    mean = {v: {k: statistics.mean(r[k] for r in rows if r["variant"] == v)
                for k in ("train_s_middle", "valid_s_middle", "epoch_s_middle", "fit_s")} for v in VARIANTS}
    # each reader must be deterministic (same seed, same metrics in every round); between readers the rows reach the
    # worker in the same order but cut into other blocks (the file-based reader cuts each file for parallelism, V2
    # bin-packs row groups): train_batches' local shuffle does not depend on the blocks, so the metrics should agree
    same = all(t == tests[v][0] for v in VARIANTS for t in tests[v])
    across = len({json.dumps(tests[v][0], sort_keys=True) for v in VARIANTS}) == 1
    from s2gr_ray.config import load_config

    cfg = load_config(args.config, args.overrides)
    # with several workers (whole blocks go to each) or a global shuffle (its permutation depends on the blocks) the
    # batches depend on the blocks by design, so the readers are compared only with one worker and the local order
    comparable = cfg.train.num_workers == 1 and cfg.train.shuffle == "local"
    header = list(rows[0])
    out_path = RESULTS / f"epoch_stream{args.tag}"
    write_csv(out_path.with_suffix(".csv"), rows)
    b, a = mean["ray_v2"], mean["file_based"]
    default_config = Path(args.config).resolve() == ROOT / "configs" / "quickstart.yaml"
    cmd = " ".join(["python benchmarks/epoch_stream.py",
                    *([] if default_config else ["--config", os.path.relpath(args.config, ROOT)]),
                    *(["--rounds", str(args.rounds)] if args.rounds != 2 else []),
                    *(["--tag", args.tag] if args.tag else []), *args.overrides])
    md = ["# Starting an epoch's Ray Data stream: Ray's parquet V2 path vs the file-based reader",
          "",
          f"- date {time.strftime('%Y-%m-%d %H:%M')}, commit {commit(ROOT)}, {platform.node()} ({os.cpu_count()} "
          f"cores), command `{cmd}`",
          "- each run in its own process and local Ray; `*_middle`: mean over epochs 2..N-1; `fit_s`: Ray Train's fit "
          "(worker start, every epoch, checkpoints, test)",
          "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    md += ["",
           f"- mean over rounds, ray_v2 / file_based: training {b['train_s_middle']:.2f} / "
           f"{a['train_s_middle']:.2f} s, "
           f"validation {b['valid_s_middle']:.2f} / {a['valid_s_middle']:.2f} s, epoch (training + validation) "
           f"{b['epoch_s_middle']:.2f} / {a['epoch_s_middle']:.2f} s "
           f"(**{b['epoch_s_middle'] / a['epoch_s_middle']:.2f}x**), "
           f"fit {b['fit_s']:.1f} / {a['fit_s']:.1f} s (**{b['fit_s'] / a['fit_s']:.2f}x**)",
           f"- test metrics identical in every run of a reader (deterministic): {'yes' if same else 'NO'}",
           "- test metrics identical across readers: "
           + ("not compared (several workers or train.shuffle=global: the batches depend on the blocks by design)"
              if not comparable else
              "yes (the same rows in the same order, cut into other blocks; the local shuffle does not depend on the "
              "blocks)" if across else "NO (the same rows in the same order, cut into other blocks: a shuffle that "
              "depends on the blocks gives other batches)")]
    out_path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out_path.with_suffix('.md')} and {out_path.with_suffix('.csv')}")
    if not same:
        raise SystemExit("a reader gave different test metrics in two rounds (same seed): not deterministic")
    if comparable and not across:
        raise SystemExit("the readers gave different test metrics: the batches depend on Ray Data's blocks")


if __name__ == "__main__":
    main()
