r"""Ray job entry point for `s2gr embed`: ② item text embeddings into --out/embeddings (builds missing upstream
artifacts first).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed.py configs/PRESET.yaml [key=value ...] --out DIR

Same arguments as `s2gr embed` (see jobs/README.md for the runtime env, storage and overrides).
"""
import sys

from _job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("embed", sys.argv[1:]))
