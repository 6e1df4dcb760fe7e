r"""Ray job entry point for `s2gr run`: the whole pipeline (prepare → embed → tokenize → train + evaluate) into
--out, then metrics.json.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/run.py configs/PRESET.yaml [key=value ...] --out DIR

Same arguments as `s2gr run` (see jobs/README.md for the runtime env, storage and overrides).
"""
import sys

from _job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("run", sys.argv[1:]))
