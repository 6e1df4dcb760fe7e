"""`s2gr <command>`: one subcommand per pipeline stage, plus `run` (all stages), `tune`, `config`.

Every command takes a preset YAML (or nothing for the built-in defaults), `key=value` overrides, and `--out RUN`,
the run directory the stages read from and write into (layout in s2gr_ray/artifacts.py). Laptop and cluster use
the same code path: jobs/ call these functions; Ray connects to RAY_ADDRESS / ray.address when set.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from s2gr_ray import artifacts
from s2gr_ray.config import Config, ConfigError, dump_yaml, load_config, valid_keys


def log(msg: str) -> None:
    print(f"[s2gr {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- stages
def _prepare(cfg: Config, out: Path) -> dict:
    from s2gr_ray.data.prepare import prepare_stage

    return prepare_stage(cfg, out, log)


def _prepare_unless_current(cfg: Config, out: Path) -> None:
    """`s2gr run`'s prepare: reuse RUN's prepared data when it was built from this data section and the same
    dataset files (`artifact_mismatch`), else (re)build it."""
    if _ensure("prepare", _prepare, cfg, out):
        log(f"prepare: reusing the prepared data in {out} (same data section and dataset files)")


def _embed(cfg: Config, out: Path) -> dict:
    from s2gr_ray.data.embed import embed_stage

    return embed_stage(cfg, out, log)


def _tokenize(cfg: Config, out: Path) -> dict:
    from s2gr_ray.tokenizer.stage import tokenize_stage

    return tokenize_stage(cfg, out, log=log)


def _train(cfg: Config, out: Path) -> dict:
    from s2gr_ray.training.driver import train_stage

    return train_stage(cfg, out, log=log)


def cmd_prepare(cfg: Config, out: Path) -> dict:
    return _prepare(cfg, out)


def cmd_embed(cfg: Config, out: Path) -> dict:
    _ensure("prepare", cmd_prepare, cfg, out)
    return _embed(cfg, out)


def cmd_tokenize(cfg: Config, out: Path) -> dict:
    _ensure("embed", cmd_embed, cfg, out)
    return _tokenize(cfg, out)


def cmd_train(cfg: Config, out: Path) -> dict:
    _ensure("tokenize", cmd_tokenize, cfg, out)
    return _train(cfg, out)


def cmd_run(cfg: Config, out: Path) -> dict:
    """prepare → embed → tokenize → train (+ evaluate): everything into one run directory. Each stage reuses
    its artifact when it matches the config and the upstream artifacts (embed, tokenize), else rebuilds it."""
    t0 = time.time()
    _prepare_unless_current(cfg, out)
    _embed(cfg, out)
    report = _tokenize(cfg, out)
    metrics = _train(cfg, out)
    log(f"run: finished in {time.time() - t0:.0f}s; metrics in {out / 'metrics.json'}")
    _print_metrics(metrics, report)
    return metrics


# stage -> (its artifact kind (folder: artifacts.FOLDER_OF), the config sections the stage hashes into the manifest's
# config_hash — exactly as the stage computes it —, the upstream stages it is built from)
_ARTIFACTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "prepare": ("data", ("data",), ()),  # data/prepare.py prepare_stage
    "embed": ("embeddings", ("embed",), ("prepare",)),  # data/embed.py embed_stage
    "tokenize": ("tokenizer", ("tokenizer",), ("embed", "prepare")),  # tokenizer/stage.py
}


def _folder(stage: str, out: Path) -> Path:
    return artifacts.FOLDER_OF[_ARTIFACTS[stage][0]](Path(out))


def artifact_mismatch(stage: str, cfg: Config, out: Path) -> str | None:
    """None when ``stage``'s artifact in ``out`` was built from this config and from the current upstream
    artifacts (themselves current); otherwise why not ("missing", "built from another config ...", ...)."""
    kind, sections, upstream = _ARTIFACTS[stage]
    folder = _folder(stage, out)
    if not (folder / artifacts.MANIFEST).exists():
        return "missing"
    try:
        manifest = artifacts.read_manifest(folder, kind)
    except artifacts.ArtifactError as exc:
        return f"unusable ({exc})"
    want = cfg.section_hash(*sections)
    if manifest.get("config_hash") != want:
        return (f"built from another config (hash of its config section {'+'.join(sections)}: "
                f"{manifest.get('config_hash')}; this config's: {want})")
    if stage == "prepare":
        from s2gr_ray.data.prepare import stale_inputs

        stale = stale_inputs(manifest, cfg.data)
        if stale:
            return stale
    if stage == "embed":
        from s2gr_ray.data.embed import stale_model

        stale = stale_model(manifest, cfg.embed)
        if stale:
            return stale
    for up in upstream:
        reason = artifact_mismatch(up, cfg, out)
        if reason is not None:
            return f"built on the {up} output, which is {reason}"
        up_folder, up_kind = _folder(up, out), _ARTIFACTS[up][0]
        if manifest.get("upstream", {}).get(up_kind) != artifacts.read_manifest(up_folder, up_kind).get("hash"):
            return f"built from another {up_kind} artifact than the one in {up_folder}"
    return None


def _ensure(stage: str, build: Callable[[Config, Path], dict], cfg: Config, out: Path) -> bool:
    """Bring an upstream artifact up to date so single stages can run on any run directory: build it when
    missing, rebuild it when it was built from another config or upstream (as `s2gr run` does; a stage reuses
    what still matches, e.g. embed after a change of embed.batch_size), never use it as it is. True when the
    artifact was current (nothing built)."""
    reason = artifact_mismatch(stage, cfg, out)
    if reason is None:
        return True
    folder = _folder(stage, out)
    if reason == "missing":
        log(f"{folder} missing: building it first")
    else:
        log(f"{folder} ({stage}) was {reason}: re-running `s2gr {stage}` into it first (use another --out to "
            "keep it)")
    build(cfg, out)
    return False


def _print_metrics(metrics: dict, report: dict | None = None) -> None:
    rows = [(view, metrics[view]) for view in artifacts.final_metric_views(metrics)]
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
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at a time (default: the space's max_concurrent_trials; 0 = as many as the cluster's "
                        "CPUs/GPUs hold now: an autoscaling cluster that starts empty needs a number here)")
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

            tune_command(Path(args.space), list(args.overrides), args.out, trials=args.trials,
                         max_concurrent=args.max_concurrent, log=log)
            return 0
        config, overrides = _split_config_arg(args)
        cfg = load_config(config, overrides)
        if args.command == "config":
            print("\n".join(valid_keys()) if args.keys else dump_yaml(cfg), end="")
            return 0
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"--out {args.out} is a file; pass a run directory (created if missing)")
        args.out.mkdir(parents=True, exist_ok=True)
        COMMANDS[args.command][0](cfg, args.out)
        return 0
    except (ConfigError, ValueError, RuntimeError, OSError) as exc:  # OSError: a path that is not what it must be
        print(f"s2gr {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 2


def _error_text(exc: BaseException) -> str:
    """One line: an OSError as 'path: reason' (not "[Errno 21] Is a directory: 'configs'"), others as is."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        names = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
        return f"{names}: {exc.strerror}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
