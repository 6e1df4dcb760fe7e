"""The benchmark scripts, loaded as modules (benchmarks/ is not a package)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_script():
    """``load_script("quality")`` -> benchmarks/quality.py as a fresh module."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
