r"""Ray job entry point for `s2gr tune`: ⑨ Ray Tune + Optuna sweep over a search space into --out (resumable).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py search_spaces/SPACE.yaml [key=value ...] --out DIR [--trials N]

Same arguments as `s2gr tune` (see jobs/README.md for the runtime env, storage and overrides).
"""
import sys

from _job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("tune", sys.argv[1:]))
