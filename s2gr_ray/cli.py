"""`s2gr <command>`: one subcommand per pipeline stage, plus `run` (all stages), `tune`, `config`.

Every command takes a preset YAML (or nothing for the built-in defaults), `key=value` overrides, and `--out RUN`,
the run directory the stages read from and write into (layout in s2gr_ray/artifacts.py). Laptop and cluster use
the same code path: jobs/ call these functions; Ray connects to RAY_ADDRESS / ray.address when set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from s2gr_ray.config import Config, ConfigError, dump_yaml, load_config, valid_keys


def log(msg: str) -> None:
    print(f"[s2gr {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- stages
def cmd_prepare(cfg: Config, out: Path) -> dict:
    from s2gr_ray.data.prepare import prepare_stage

    return prepare_stage(cfg, out, log)


def cmd_embed(cfg: Config, out: Path) -> dict:
    from s2gr_ray.data.embed import embed_stage

    _ensure(out / "manifest.json", cmd_prepare, cfg, out)
    return embed_stage(cfg, out, log)


def cmd_tokenize(cfg: Config, out: Path) -> dict:
    from s2gr_ray.tokenizer.stage import tokenize_stage

    _ensure(out / "embeddings" / "manifest.json", cmd_embed, cfg, out)
    return tokenize_stage(cfg, out, log=log)


def cmd_train(cfg: Config, out: Path) -> dict:
    from s2gr_ray.training.driver import train_stage

    _ensure(out / "tokenizer" / "manifest.json", cmd_tokenize, cfg, out)
    return train_stage(cfg, out, log=log)


def cmd_run(cfg: Config, out: Path) -> dict:
    """prepare → embed → tokenize → train (+ evaluate): everything into one run directory."""
    t0 = time.time()
    cmd_prepare(cfg, out)
    cmd_embed(cfg, out)
    report = cmd_tokenize(cfg, out)
    metrics = cmd_train(cfg, out)
    log(f"run: finished in {time.time() - t0:.0f}s; metrics in {out / 'metrics.json'}")
    _print_metrics(metrics, report)
    return metrics


def _ensure(marker: Path, build: Callable[[Config, Path], dict], cfg: Config, out: Path) -> None:
    """Build a missing upstream artifact so single stages can run on a fresh run directory."""
    if not marker.exists():
        log(f"{marker.parent} missing: building it first")
        build(cfg, out)


def _print_metrics(metrics: dict, report: dict | None = None) -> None:
    rows = [(view, m) for view, m in metrics.items() if isinstance(m, dict) and view in ("valid", "test", "test_hist10")]
    if not rows:
        return
    keys = [k for k in rows[0][1] if "@" in k]
    print("\n| split | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for view, m in rows:
        print(f"| {view} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |")
    print()


# ------------------------------------------------------------------------------------------------ main
COMMANDS: dict[str, tuple[Callable[[Config, Path], dict], str]] = {
    "prepare": (cmd_prepare, "① ④ ingest the dataset, split leave-one-out, write sharded parquet sequences"),
    "embed": (cmd_embed, "② item text embeddings (sentence-transformers or a precomputed file)"),
    "tokenize": (cmd_tokenize, "③ fit the SID tokenizer (CoBa RQ-VAE), coarse clusters, report"),
    "train": (cmd_train, "⑤ ⑥ Ray Data → Ray Train (DeepSpeed) training with validation and test metrics"),
    "run": (cmd_run, "all stages end to end into --out, then metrics.json"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2gr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", nargs="?", help="preset YAML (configs/*.yaml); omit for the built-in defaults")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 data.path=/data")
        p.add_argument("--out", required=True, type=Path, help="run directory (created if missing)")
    p = sub.add_parser("tune", help="⑨ Ray Tune + Optuna sweep over a search space")
    p.add_argument("space", help="search space YAML (search_spaces/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to the base preset")
    p.add_argument("--out", required=True, type=Path, help="sweep directory (resumable)")
    p.add_argument("--trials", type=int, default=None, help="number of trials (default: the space's)")
    p = sub.add_parser("config", help="print the resolved config (validates presets and overrides)")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--keys", action="store_true", help="list every valid key")
    # ---- serving (GitHub #10): recommend / score / evaluate / report RUN, in s2gr_ray/serving/commands.py
    from s2gr_ray.serving.commands import add_parsers as add_serving_parsers

    add_serving_parsers(sub)
    return parser


def _split_config_arg(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`s2gr prepare key=value` (no preset) puts the first override into the config slot: fix that up."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from s2gr_ray.serving.commands import COMMANDS as SERVING_COMMANDS, run_command as run_serving

    if args.command in SERVING_COMMANDS:  # serving (GitHub #10): own arguments and error handling
        return run_serving(args)
    try:
        if args.command == "tune":
            from s2gr_ray.tuning.sweep import tune_command

            tune_command(Path(args.space), list(args.overrides), args.out, trials=args.trials, log=log)
            return 0
        config, overrides = _split_config_arg(args)
        cfg = load_config(config, overrides)
        if args.command == "config":
            print("\n".join(valid_keys()) if args.keys else dump_yaml(cfg), end="")
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        result = COMMANDS[args.command][0](cfg, args.out)
        return 0
    except (ConfigError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"s2gr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
