"""Validation read once and replayed from memory vs read through Ray Data every epoch, in one run.

    python benchmarks/eval_replay.py                  # 2,000 synthetic users, 4 epochs, ~3 min on 2 cores
    python benchmarks/eval_replay.py --users 5000 --epochs 5

Each training worker keeps its share of the validation batches after the first validation
(s2gr_ray.training.data_pipeline.KeptBatches, up to S2GR_EVAL_KEEP_BYTES); with S2GR_EVAL_KEEP_BYTES=0 it reads
them through Ray Data every epoch, as before. Both variants train the same prepared synthetic run (Ray Train +
DeepSpeed on a local Ray, each variant in its own process and Ray) with a learning rate too small to move a
weight, so every validation decodes the same model on the same users: the per-epoch difference is the cost of
reading. The table gives `eval_seconds` per epoch, the mean over epochs 2..N, and checks that both variants
report the same validation metrics. Writes benchmarks/results/eval_replay.{md,csv}.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import train_subprocess  # noqa: E402
from provenance import commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {"replayed": None, "read every epoch": "0"}  # S2GR_EVAL_KEEP_BYTES


def overrides(users: int, epochs: int) -> list[str]:
    items = max(80, users // 5)
    return [
        f"data.synthetic.num_items={items}", f"data.synthetic.num_users={users}", "data.synthetic.num_top_categories=4",
        "data.synthetic.num_sub_categories=4", "data.synthetic.max_length=20", "embed.path=synthetic",
        "tokenizer.codebook_sizes=[16,16]", "tokenizer.num_coarse=4", "tokenizer.epochs=40", "tokenizer.latent_dim=8",
        "tokenizer.hidden_dims=[32]", "model.d_model=32", "model.num_heads=2", "model.d_head=16", "model.d_ff=64",
        "model.encoder_layers=1", "model.decoder_layers=1", "model.aux_decoder_layers=1", "model.dropout=0.0",
        "train.batch_size=64", "train.lr=1e-30", "train.warmup_steps=0", "train.patience=0",
        f"train.max_epochs={epochs}", "eval.beam_size=10", "eval.batch_size=256", "ray.num_cpus=2",
    ]


def prepare(run: Path, over: list[str], config: str | None = None) -> None:
    """Prepare, embed and tokenize RUN from CONFIG (None: the defaults) with the overrides ``over``, quietly."""
    from s2gr_ray.config import load_config
    from s2gr_ray.data.embed import embed_stage
    from s2gr_ray.data.prepare import prepare_stage
    from s2gr_ray.tokenizer.stage import tokenize_stage

    cfg = load_config(config, over)
    quiet = lambda msg: None  # noqa: E731
    prepare_stage(cfg, run, quiet)
    embed_stage(cfg, run, quiet)
    tokenize_stage(cfg, run, log=quiet)


def write_csv(path: Path, rows: list[dict]) -> None:
    """One row per dict, the columns of the first row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (epoch 1 reads in both variants)")
    over = overrides(args.users, args.epochs)
    rows, valid = [], {}
    with tempfile.TemporaryDirectory(prefix="s2gr-eval-replay-") as tmp:
        run = Path(tmp) / "run"
        print(f"[eval_replay] preparing {args.users:,} synthetic users", flush=True)
        prepare(run, over)
        for i, (label, keep) in enumerate(VARIANTS.items()):
            print(f"[eval_replay] training {args.epochs} epochs: validation {label}", flush=True)
            # each variant in its own process: its local Ray's workers read S2GR_EVAL_KEEP_BYTES
            out = train_subprocess(run, over + [f"train.run_name=variant{i}"], env={"S2GR_EVAL_KEEP_BYTES": keep})
            secs = [h["eval_seconds"] for h in out["history"]]
            valid[label] = [{k: v for k, v in h.items() if k.startswith("valid/") and k != "valid/best"}
                            for h in out["history"]]
            later = secs[1:]
            rows.append({"variant": label, **{f"eval_s_epoch{e + 1}": round(s, 2) for e, s in enumerate(secs)},
                         "eval_s_mean_epochs_2_on": round(sum(later) / len(later), 2), "run_wall_s": round(out["wall"], 1)})
    same = all(a == b for a, b in zip(*valid.values()))
    ratio = rows[1]["eval_s_mean_epochs_2_on"] / max(rows[0]["eval_s_mean_epochs_2_on"], 1e-9)
    header = list(rows[0])
    out = RESULTS / f"eval_replay{args.tag}"
    write_csv(out.with_suffix(".csv"), rows)
    users_valid = int(valid["replayed"][0].get("valid/count", 0))
    md = ["# Validation replayed from memory vs read through Ray Data every epoch",
          "",
          f"- date {time.strftime('%Y-%m-%d %H:%M')}, commit {commit(ROOT)}, {platform.node()} "
          f"({os.cpu_count()} cores), command `python benchmarks/eval_replay.py --users {args.users} "
          f"--epochs {args.epochs}{' --tag ' + args.tag if args.tag else ''}`",
          f"- {users_valid:,} validation users, one Ray Train worker (DeepSpeed ZeRO-2, CPU), learning rate 1e-30 "
          "(the same model every epoch)",
          "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    md += ["", f"- validation seconds per epoch after the first, read every epoch / replayed: **{ratio:.2f}x**",
           f"- validation metrics identical in both variants, every epoch: {'yes' if same else 'NO'}"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    if not same:
        raise SystemExit("the variants reported different validation metrics")


if __name__ == "__main__":
    main()
