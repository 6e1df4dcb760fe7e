r"""Ray job entry point for `s2gr prepare`: ① ④ ingest the dataset, split leave-one-out, write sharded parquet
sequences into --out.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/prepare.py configs/PRESET.yaml [key=value ...] --out DIR

Same arguments as `s2gr prepare` (see jobs/README.md for the runtime env, storage and overrides).
"""
import sys

from _job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("prepare", sys.argv[1:]))
