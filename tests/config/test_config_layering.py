"""DESIGN.md convention 3: model, tokenizer and evaluation code know nothing of Ray or DeepSpeed."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "s2gr_ray"
PURE = ["model", "tokenizer", "evaluation", "config.py", "artifacts.py"]
FORBIDDEN = ("ray", "deepspeed")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("part", PURE)
def test_pure_parts_import_no_ray_or_deepspeed(part):
    files = [PKG / part] if part.endswith(".py") else sorted((PKG / part).rglob("*.py"))
    assert files
    for f in files:
        bad = imported_modules(f) & set(FORBIDDEN)
        assert not bad, f"{f.relative_to(PKG.parent)} imports {bad}"


def test_config_imports_no_torch():
    assert not imported_modules(PKG / "config.py") & {"torch", "ray", "deepspeed"}
