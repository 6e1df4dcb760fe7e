"""Quality benchmark: TIGER vs S²GR and the ablations on Amazon Beauty, identical data, seeds, sizes and budget.

    python benchmarks/quality.py --scale cpu                      # all arms, 1 seed, CPU-scale preset
    python benchmarks/quality.py --scale cpu --arms tiger s2gr --seeds 0 1 2
    python benchmarks/quality.py --scale paper --data /data/amazon-beauty   # GPU preset (configs/beauty_paper.yaml)
    python benchmarks/quality.py --table-only --tag _all --rows-from A.csv --rows-from B.csv  # one table, no training

Every arm runs the real pipeline (tokenize → Ray Train with DeepSpeed → constrained beam search) on one shared
prepare + embed of the dataset; tokenizers are shared between arms with the same tokenizer config. Each arm trains
to convergence: the preset's cosine schedule (20 epochs at CPU scale), stopped early when validation NDCG@10 has
not improved for `train.patience` epochs; the best epoch is evaluated on the test split. Model selection uses
validation only. Writes benchmarks/results/quality_<scale>.{csv,md} and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import wait_for_quiet  # noqa: E402
from provenance import commit as _git_commit  # noqa: E402
from s2gr_ray.config import flatten, load_config, recorded_value  # noqa: E402

ARMS: dict[str, list[str]] = {
    "tiger": ["tokenizer.kind=rqvae", "model.n_think=0", "model.aux_decoder_layers=0"],
    "tiger_coba": ["model.n_think=0", "model.aux_decoder_layers=0"],
    "s2gr_upfront": ["model.placement=upfront"],
    "s2gr": [],
    "s2gr_no_align": ["model.w_align=0"],
    "s2gr_no_aux": ["model.aux_decoder_layers=0"],
    "s2gr_no_cooc": ["tokenizer.cooccurrence=false"],
    "s2gr_no_uniform": ["tokenizer.uniformity=false"],
    "s2gr_no_balance": ["tokenizer.balance=false"],
    "s2gr_think2": ["model.n_think=2"],
}
# arms whose tokenizer differs from S²GR's by design (their SIDs are not expected to match S²GR's)
DIFFERENT_TOKENIZER = {arm for arm, over in ARMS.items() if any(o.startswith("tokenizer.") for o in over)}
PRESETS = {"cpu": REPO / "configs" / "beauty.yaml", "paper": REPO / "configs" / "beauty_paper.yaml"}
METRICS = ["recall@5", "ndcg@5", "recall@10", "ndcg@10"]


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def link_data(base: Path, run: Path) -> None:
    """A fresh run directory sharing the prepared data and embeddings of `base` (hard links / copies)."""
    run.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "items.parquet", "interactions.parquet", "sequences", "embeddings"):
        src, dst = base / name, run / name
        if dst.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=os.link)
        else:
            os.link(src, dst)


def run_arm(arm: str, seed: int, args, base: Path, work: Path) -> dict:
    from s2gr_ray.tokenizer.stage import tokenize_stage
    from s2gr_ray.training.driver import train_stage

    cfg = load_config(PRESETS[args.scale], arm_overrides(arm, seed, args))
    run = work / f"{arm}_s{seed}"
    settings = arm_settings(cfg)
    if (run / "metrics.json").exists() and not args.force:
        check_same_settings(run, settings)
        log(f"{arm} seed {seed}: reusing {run / 'metrics.json'}")
        return json.loads((run / "metrics.json").read_text())
    if args.force:
        forget_arm(cfg, run, log)
    if args.quiet_wait > 0:  # another CPU job slows an arm's epochs several-fold (harness.py)
        wait_for_quiet(args.quiet_wait, 25.0, log)
    link_data(base, run)
    # the tokenizer section plus the arm's seed (the folder names of earlier work folders: the seed was then a
    # top-level config key); tokenizer.seed is part of the section
    tok_cache = work / "tokenizers" / cfg.section_hash("tokenizer", extra={"seed": seed})
    if tok_cache.exists() and not (run / "tokenizer").exists():
        shutil.copytree(tok_cache, run / "tokenizer")
    tokenize_stage(cfg, run, log=log)
    if not tok_cache.exists():
        shutil.copytree(run / "tokenizer", tok_cache)
    t0 = time.time()
    metrics = train_stage(cfg, run, log=log)
    # written once the arm's metrics.json is: the settings (and commit) those metrics were trained with
    (run / ARM_SETTINGS).write_text(json.dumps({**settings, COMMIT_KEY: _git_commit(REPO)}, indent=1, sort_keys=True,
                                               default=list))
    log(f"{arm} seed {seed}: test {json.dumps({k: round(metrics['test'][k], 4) for k in METRICS})} "
        f"({time.time() - t0:.0f}s)")
    return metrics


def forget_arm(cfg, run: Path, log=print) -> None:
    """--force: retrain an arm from scratch. Its metrics and settings go first (an interrupted retrain must not
    leave the old metrics under new settings), then Ray Train's checkpoints of the run, which it would otherwise
    resume: STORAGE/train.run_name, local or at a pyarrow URI (train.storage_path = s3://..., gs://...)."""
    import pyarrow.fs as pafs

    from s2gr_ray.training.driver import run_folder, storage_root

    (run / "metrics.json").unlink(missing_ok=True)
    (run / ARM_SETTINGS).unlink(missing_ok=True)
    storage = storage_root(cfg, run)
    fs, target = run_folder(storage, cfg.train.run_name)
    if fs.get_file_info(target).type != pafs.FileType.NotFound:
        log(f"--force: removing the checkpoints of {cfg.train.run_name} in {storage}")
        fs.delete_dir(target)


# keys that change where or how fast an arm runs, not what it learns: a finished arm is reused across them
SPEED_ONLY = ("data.path", "ray.", "train.storage_path", "train.log_every", "train.compile", "train.torch_threads",
              "train.cpus_per_worker", "eval.batch_size", "train.ingest_buffer_mb", "train.profile_steps")
ARM_SETTINGS = "arm_settings.json"


def arm_settings(cfg) -> dict:
    """What an arm learns from: the flattened config without the SPEED_ONLY keys."""
    return {k: v for k, v in flatten(cfg).items() if not k.startswith(SPEED_ONLY)}


TEXT_COLUMNS = ("arm", "settings", "commit", "sids_sha")  # the other CSV columns are numbers
COMMIT_KEY = "_commit"  # recorded beside the settings in ARM_SETTINGS, not compared
PER_SEED = ("train.seed", "tokenizer.seed", "train.run_name")  # differ between the seeds of one arm


def settings_diff(saved: dict, now: dict) -> list[str]:
    """Keys whose values differ (s2gr_ray.config.differing_keys; the recorded commit is not a setting)."""
    from s2gr_ray.config import differing_keys

    saved = {k: v for k, v in saved.items() if k != COMMIT_KEY}
    return differing_keys(saved, json.loads(json.dumps(now, default=list)))


def settings_key(settings: dict) -> str:
    """Short hash of an arm's settings without the per-seed keys: the rows of one table row share it."""
    import hashlib

    from s2gr_ray.config import comparable_settings

    kept = {k: v for k, v in comparable_settings(settings).items() if k not in PER_SEED and k != COMMIT_KEY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=list).encode()).hexdigest()[:10]


def arm_overrides(arm: str, seed: int, args) -> list[str]:
    return [f"data.path={args.data}", f"train.seed={seed}", f"tokenizer.seed={seed}",
            f"train.run_name={arm}_s{seed}", *ARMS[arm], *args.overrides]


def expected_settings(arm: str, seed: int, args) -> dict:
    """The settings this invocation trains (arm, seed) with."""
    return arm_settings(load_config(PRESETS[args.scale], arm_overrides(arm, seed, args)))


def check_same_settings(run: Path, settings: dict) -> None:
    """Refuse to reuse a finished arm trained with other settings (e.g. another train.max_epochs)."""
    path = run / ARM_SETTINGS
    if not path.exists():
        log(f"note: {run} has no {ARM_SETTINGS} (trained by an older quality.py); reusing it unchecked")
        return
    saved = json.loads(path.read_text())
    now = json.loads(json.dumps(settings, default=list))
    diff = settings_diff(saved, now)
    if diff:
        shown = ", ".join(f"{k}: {recorded_value(saved, k)!r} then, {recorded_value(now, k)!r} now" for k in diff[:6])
        raise SystemExit(f"{run} was trained with other settings ({shown}{', ...' if len(diff) > 6 else ''}); "
                         "pass --force to retrain it, or a new --work folder (and --tag) for these settings")


def sids_checksum(path: Path) -> str:
    """The first 12 hex digits of sha256 over an arm's Semantic ID table (sids.npy), "" without one. Arms that share
    a tokenizer config and seed should share it; the tokenizer fit is deterministic on one machine but not across
    machines (CPU kernels), so a mismatch says a pair was not trained on the same SIDs."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else ""


def row_of(arm: str, seed: int, m: dict, report: dict) -> dict:
    hist = m.get("history", [])
    epoch_s = [h.get("train/epoch_seconds", 0.0) for h in hist]
    decode = [h["eval_seconds"] / h["valid/count"] * 1000 for h in hist if h.get("valid/count")]
    row = {"arm": arm, "seed": seed, **{k: m["test"][k] for k in METRICS}}
    row.update({f"{k}_hist10": m.get("test_hist10", {}).get(k) for k in METRICS})
    row["test_users"] = m["test"].get("count")
    row.update({"valid_ndcg@10": m["valid"].get("ndcg@10"), "best_epoch": m["train"].get("best_epoch"),
                "epochs": m["train"].get("epochs"),
                # medians over epochs: robust to an epoch that shared the machine with other work
                "sec_per_epoch": statistics.median(epoch_s) if epoch_s else None,
                "decode_sec_per_1k_users": statistics.median(decode) if decode else None,
                "tok_util_l1": (report.get("levels") or [{}])[0].get("utilization"),
                "tok_collision": report.get("collision_rate")})
    return row


def sid_pairing(by_arm: dict[str, list[dict]], other: str, seeds: list[int]) -> str:
    """For a paired-gain line: whether S²GR and the other arm trained on the same Semantic IDs in each seed (by
    `sids_sha`); "" where a row lacks the checksum (older CSVs) or the arms' tokenizers differ by design."""
    sha = {(r["arm"], r["seed"]): r.get("sids_sha") or "" for rs in by_arm.values() for r in rs}
    pairs = [(sha.get(("s2gr", s), ""), sha.get((other, s), "")) for s in seeds]
    if other in DIFFERENT_TOKENIZER or not all(a and b for a, b in pairs):
        return ""
    differ = [s for s, (a, b) in zip(seeds, pairs) if a != b]
    if not differ:
        return " (same SIDs in every pair)"
    return (f" (**SIDs differ** in seed{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))}: the arms "
            "were tokenized apart, e.g. on other machines, so those pairs also compare tokenizer fits)")


# the commit from which train_batches' local shuffle no longer depends on Ray Data's blocks: the same seed gives
# other batches than at earlier commits, so a pair trained on both sides of it differs in its data order too
DATA_ORDER_CHANGE = "3a573be"


def trained_after_order_change(commit: str) -> bool | None:
    """Whether a row's training commit includes DATA_ORDER_CHANGE (True / False), None when git cannot say (no
    repository, an unknown or empty commit)."""
    import subprocess

    commit = (commit or "").removesuffix("-dirty")
    if not commit:
        return None
    done = subprocess.run(["git", "merge-base", "--is-ancestor", DATA_ORDER_CHANGE, commit], cwd=REPO,
                          capture_output=True, text=True)
    return {0: True, 1: False}.get(done.returncode)


def order_pairing(by_arm: dict[str, list[dict]], other: str, seeds: list[int]) -> str:
    """For a paired-gain line: a remark when S²GR and the other arm of a seed were trained on different sides of
    DATA_ORDER_CHANGE (other batches for the same seed); "" otherwise or where git cannot tell."""
    commits = {(r["arm"], r["seed"]): str(r.get("commit") or "") for rs in by_arm.values() for r in rs}
    differ = []
    for seed in seeds:
        sides = {trained_after_order_change(commits.get((arm, seed), "")) for arm in ("s2gr", other)}
        if sides == {True, False}:
            differ.append(seed)
    if not differ:
        return ""
    return (f" (**data order differs** in seed{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))}: one "
            f"arm was trained before {DATA_ORDER_CHANGE}, whose local shuffle gives other batches for the same seed)")


def summarize(rows: list[dict]) -> list[str]:
    """Markdown: mean ± std over seeds per arm, and the S²GR vs TIGER gain."""
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    cols = METRICS + [f"{k}_hist10" for k in METRICS]
    lines = ["| arm | seeds | " + " | ".join(cols) + " | epochs | s/epoch (mean of per-seed medians) | "
             "decode s/1k valid users (mean of per-seed medians) |",
             "|---|---|" + "---|" * (len(cols) + 3)]
    means = {}
    for arm, rs in by_arm.items():
        cells = []
        for c in cols:
            vals = [r[c] for r in rs if r.get(c) is not None]
            mu = statistics.mean(vals) if vals else float("nan")
            means[(arm, c)] = mu
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{mu:.4f}" + (f" ± {sd:.4f}" if len(vals) > 1 else ""))
        def mean_of(key: str) -> float:
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.mean(vals) if vals else float("nan")

        ep, spe, dec = mean_of("epochs"), mean_of("sec_per_epoch"), mean_of("decode_sec_per_1k_users")
        lines.append(f"| {arm} | {len(rs)} | " + " | ".join(cells) + f" | {ep:.1f} | {spe:.0f} | {dec:.1f} |")
    lines.append("")
    for other, claim in (("tiger", "S²GR vs TIGER (target: better on all four, >= +9.5% on average)"),
                         ("tiger_coba", "S²GR vs TIGER with the CoBa tokenizer (the gain of thinking alone)"),
                         ("s2gr_upfront", "stepwise vs upfront reasoning (target: stepwise better)"),
                         ("s2gr_no_align", "S²GR vs S²GR without L_Align (target: removing L_Align hurts)"),
                         ("s2gr_no_aux", "S²GR vs S²GR without the auxiliary decoder (L_InfoNCE, L_Reg)"),
                         ("s2gr_no_cooc", "S²GR vs S²GR with CoBa's co-occurrence smoothing off"),
                         ("s2gr_no_uniform", "S²GR vs S²GR with CoBa's uniformity penalty off"),
                         ("s2gr_no_balance", "S²GR vs S²GR with CoBa's load balancing off"),
                         ("s2gr_think2", "S²GR (one thinking vector per level) vs two")):
        if "s2gr" not in by_arm or other not in by_arm:
            continue
        seeds = sorted({r["seed"] for r in by_arm["s2gr"]} & {r["seed"] for r in by_arm[other]})  # paired seeds
        if not seeds:
            lines.append(f"- {claim}: no seed run for both arms yet")
            continue
        mine = {c: statistics.mean(r[c] for r in by_arm["s2gr"] if r["seed"] in seeds) for c in METRICS}
        theirs = {c: statistics.mean(r[c] for r in by_arm[other] if r["seed"] in seeds) for c in METRICS}
        gains = {c: (mine[c] / theirs[c] - 1) * 100 for c in METRICS if theirs[c] > 0}
        if gains:
            lines.append(f"- {claim}, test standard view, seed{'s' if len(seeds) > 1 else ''} "
                         f"{', '.join(map(str, seeds))}: " + ", ".join(f"{c} {g:+.1f}%" for c, g in gains.items())
                         + f"; average {statistics.mean(gains.values()):+.1f}%" + sid_pairing(by_arm, other, seeds)
                         + order_pairing(by_arm, other, seeds))
    users = [r.get("test_users") for r in rows if r.get("test_users")]
    if users and ("tiger", "recall@10") in means:
        r = means[("tiger", "recall@10")]
        se = math.sqrt(r * (1 - r) / users[0]) if r > 0 else 0.0
        lines.append(f"- sampling noise: {int(users[0]):,} test users; the binomial standard error of TIGER's "
                     f"recall@10 is {se:.4f} ({se / r * 100 if r else 0:.1f}% relative) per seed")
    if "tiger" in by_arm or "s2gr" in by_arm:
        lines.append("- published on this protocol (paper scale): TIGER recall@10 0.0648 / ndcg@10 0.0384; best "
                     "known recall@10 0.0809 / ndcg@10 0.0464")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data", default=os.environ.get("S2GR_BEAUTY_PATH", str(REPO.parent / "shared" / "data" /
                                                                           "amazon-beauty")))
    p.add_argument("--work", type=Path, default=REPO / "runs" / "quality")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--force", action="store_true", help="re-run arms that already have metrics")
    p.add_argument("--quiet-wait", type=float, default=120.0, metavar="S", help="before training an arm, wait up "
                   "to S seconds for the CPUs to be idle (below 25%%); when they are not, the busiest processes are "
                   "logged and the arm starts anyway (0: no wait)")
    p.add_argument("--tag", default="", help="suffix of the result files, e.g. _long for quality_cpu_long.md "
                   "(use a separate --work folder when the overrides change the training)")
    p.add_argument("--drop-earlier", action="store_true", help="write only this work folder's runs; by default the "
                   "rows of an existing results CSV for arms and seeds the work folder lacks are kept")
    p.add_argument("--rows-from", action="append", type=Path, default=[], metavar="CSV", help="also keep the rows "
                   "of this results CSV (repeatable; after the work folder's runs and the tag's own CSV; same "
                   "settings rule)")
    p.add_argument("--table-only", action="store_true", help="train nothing: write the table from the work "
                   "folder's finished runs and the kept CSV rows (no dataset needed)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every arm (e.g. train.max_epochs=10)")
    args = p.parse_args()
    for path in args.rows_from:
        if not path.is_file():
            print(f"--rows-from {path}: no such results CSV", file=sys.stderr)
            return 2
    if args.table_only:
        rows = [r for r in table_rows(args) if r["arm"] in args.arms]
        if not rows:
            print(f"--table-only: no finished runs in {args.work} and no kept CSV rows for arms "
                  f"{' '.join(args.arms)} under these settings", file=sys.stderr)
            return 2
        args.results.mkdir(parents=True, exist_ok=True)
        write(rows, args)
        print("\n".join(summarize(rows)))
        return 0
    base = args.work / f"base_{args.scale}"
    problem = missing_data(base, Path(args.data))
    if problem:
        print(problem, file=sys.stderr)
        return 2

    from s2gr_ray.data.embed import embed_stage
    from s2gr_ray.data.prepare import prepare_stage

    cfg = load_config(PRESETS[args.scale], [f"data.path={args.data}", *args.overrides])
    if not (base / "manifest.json").exists():
        prepare_stage(cfg, base, log)
    elif (Path(args.data) / "sequences.txt").exists():  # a base copied without the raw files is taken as it is
        from s2gr_ray.cli import artifact_mismatch

        stale = artifact_mismatch("prepare", cfg, base)
        if stale:  # its shards are hard-linked into every arm's run: never rebuilt in place
            print(f"{base} was {stale}: use a new --work folder for these data settings", file=sys.stderr)
            return 2
    embed_stage(cfg, base, log)
    rows: list[dict] = []
    args.results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for arm in args.arms:
            run_arm(arm, seed, args, base, args.work)
            rows = table_rows(args)
            write(rows, args)
    print("\n".join(summarize(rows)))
    return 0


def missing_data(base: Path, data: Path) -> str:
    """Why the run cannot start ("" if it can). The raw files are read once, into WORK/base_SCALE: a prepared base
    (e.g. copied to a GPU machine with the tokenizer cache) needs none."""
    if (base / "manifest.json").exists() or (data / "sequences.txt").exists():
        return ""
    return (f"Amazon Beauty not found at {data} and no prepared base at {base}: pass --data or set "
            "S2GR_BEAUTY_PATH (or --work a folder holding base_SCALE)")


def finished_rows(work: Path, args) -> list[dict]:
    """One row per finished arm and seed in `work` (not only this invocation's), arms in ARMS order: adding seeds
    or arms later keeps the earlier ones in the table. A run trained with other settings than this invocation's
    (another lr, epoch budget, ...) is left out, with a line saying so: one table row never mixes settings."""
    rows = []
    for arm in ARMS:
        runs = []
        for path in work.glob(f"{arm}_s*/metrics.json"):  # run_arm's folders: {arm}_s{seed}
            name, _, seed = path.parent.name.rpartition("_s")
            if name == arm and seed.isdigit():
                runs.append((int(seed), path.parent))
        for seed, run in sorted(runs):
            want = expected_settings(arm, seed, args)
            saved_path = run / ARM_SETTINGS
            saved = json.loads(saved_path.read_text()) if saved_path.exists() else None
            diff = settings_diff(saved, want) if saved is not None else []
            if diff:
                log(f"not in the table: {run.name}, trained with other settings ({', '.join(diff[:4])}"
                    f"{', ...' if len(diff) > 4 else ''})")
                continue
            report_path = run / "tokenizer" / "report.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            row = row_of(arm, seed, json.loads((run / "metrics.json").read_text()), report)
            row["sids_sha"] = sids_checksum(run / "tokenizer" / "sids.npy")
            row["settings"] = settings_key(want)
            row["commit"] = (saved or {}).get(COMMIT_KEY, "")
            rows.append(row)
    return rows


def table_rows(args) -> list[dict]:
    """The table's rows: the work folder's finished runs, then the rows of the tag's own results CSV (unless
    --drop-earlier) and of the --rows-from CSVs for arms and seeds not yet in, first source first."""
    rows = finished_rows(args.work, args) if args.work.is_dir() else []
    own = [] if args.drop_earlier else [args.results / f"quality_{args.scale}{args.tag}.csv"]
    for path in own + list(args.rows_from):
        rows = with_earlier_rows(rows, path, args)
    return rows


def with_earlier_rows(rows: list[dict], csv_path: Path, args) -> list[dict]:
    """`rows` plus the rows of an earlier results CSV for (arm, seed) pairs `rows` lacks, in ARMS and seed order: a
    fresh checkout (empty work folder) that adds seeds extends the committed table instead of replacing it. Only
    rows whose `settings` key equals this invocation's for their arm are kept (a CSV row without one, written by an
    older quality.py, cannot be checked and is left out, with a line saying so)."""
    if not csv_path.exists():
        return rows
    have = {(r["arm"], r["seed"]) for r in rows}
    kept, other = [], []
    with open(csv_path, newline="") as fh:
        for line, rec in enumerate(csv.DictReader(fh), start=2):
            try:
                row = {k: (v if k in TEXT_COLUMNS else int(v) if k == "seed" else float(v) if v != "" else None)
                       for k, v in rec.items()}
            except (TypeError, ValueError) as exc:
                raise SystemExit(f"{csv_path}, line {line}: cannot read the row ({exc}); fix or delete it, "
                                 "or pass --drop-earlier") from None
            if row["arm"] in ARMS and (row["arm"], row["seed"]) not in have:
                if row.get("settings") == settings_key(expected_settings(row["arm"], row["seed"], args)):
                    kept.append(row)
                else:
                    other.append(f"{row['arm']} seed {row['seed']}")
    if kept:
        log(f"keeping {len(kept)} earlier rows of {csv_path.name} ({', '.join(sorted({r['arm'] for r in kept}))})")
    if other:
        log(f"not keeping {len(other)} earlier rows of {csv_path.name} ({', '.join(other[:6])}"
            f"{', ...' if len(other) > 6 else ''}): trained with other settings, or written without a settings key "
            "by an older quality.py; use another --tag for these settings, or re-run those arms here")
    order = list(ARMS)
    return sorted(rows + kept, key=lambda r: (order.index(r["arm"]), r["seed"]))


def write(rows: list[dict], args) -> None:
    csv_path = args.results / f"quality_{args.scale}{args.tag}.csv"
    with open(csv_path, "w", newline="") as fh:
        fields = list(dict.fromkeys(k for r in rows for k in r))  # earlier rows may predate a column
        w = csv.DictWriter(fh, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    commit = _git_commit(REPO)
    commits = ", ".join(sorted({str(r["commit"]) for r in rows if r.get("commit")}))
    machine = f"{os.cpu_count()} CPU cores, " + (_gpu_name() or "no GPU")
    header = [f"# Quality benchmark ({args.scale} scale{', ' + args.tag.strip('_') if args.tag else ''})", "",
              f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit}; machine: {machine}",
              f"- command (the last that wrote this table): `python benchmarks/quality.py {' '.join(sys.argv[1:])}`",
              f"- rows trained at commit(s): {commits or 'not recorded'} (the `commit` column; the rows of one arm "
              "share its `settings` key)",
              "- test split, full ranking through trie-constrained beam search; `_hist10` = users with >= 10 history "
              "items (the paper's view)", ""]
    (args.results / f"quality_{args.scale}{args.tag}.md").write_text("\n".join(header + summarize(rows)) + "\n")


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


if __name__ == "__main__":
    sys.exit(main())
