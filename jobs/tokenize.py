r"""Ray job entry point for `s2gr tokenize`: ③ fit the SID tokenizer (CoBa RQ-VAE) and coarse clusters into
--out/tokenizer.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tokenize.py configs/PRESET.yaml [key=value ...] --out DIR

Same arguments as `s2gr tokenize` (see jobs/README.md for the runtime env, storage and overrides).
"""
import sys

from _job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("tokenize", sys.argv[1:]))
