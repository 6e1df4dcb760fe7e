"""Tiny-tensor tests: single-threaded torch (tests/conftest.py one_torch_thread)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield
