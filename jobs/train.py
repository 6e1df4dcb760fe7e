r"""Ray job entry point for `s2gr train`: ⑤ ⑥ Ray Data → Ray Train (DeepSpeed) training; train.use_gpu=true asks the
autoscaler for GPU nodes.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py configs/PRESET.yaml [key=value ...] --out DIR

Same arguments as `s2gr train` (see jobs/README.md for the runtime env, storage and overrides).
"""
import sys

from _job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("train", sys.argv[1:]))
