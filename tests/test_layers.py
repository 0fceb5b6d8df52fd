"""Imports run one way: base → data | search_space → runtime → evaluators | training → experiment →
search | results → cli. A module may import its own part and the parts below it, never a part beside
it or above it; imports inside functions count too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import exitnas

ROOT = Path(exitnas.__file__).parent

#: Part → rank; parts of one rank (data and search_space, evaluators and training, search and
#: results) must not import each other.
RANKS = {"base": 0, "data": 1, "search_space": 1, "config": 2, "runtime": 3, "evaluators": 4, "training": 4,
         "experiment": 5, "search": 6, "results": 6, "cli": 7}
#: Top-level modules, by part (sub-packages are their own part).
MODULES = {
    "base": {"__init__", "_errors", "_io", "_registry", "_confidence", "_samplers", "_storage", "_pareto",
             "_trial_errors", "_threads"},
    "config": {"_config"},
    "experiment": {"experiment", "_trial_codec", "_check", "_registries"},
    "search": {"search", "_objective", "_study", "_workers", "_ray_backend"},
    "cli": {"cli", "__main__", "_demo"},
}


def _part(module: str) -> str:
    """``exitnas.x.y`` → its part."""
    name = module.split(".")[1] if "." in module else "__init__"
    if (ROOT / name).is_dir():
        return name
    for part, names in MODULES.items():
        if name in names:
            return part
    raise AssertionError(f"module exitnas.{name} is in no part: add it to MODULES in {__file__}")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exitnas"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("exitnas")}
    return out


def test_imports_run_one_way() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        here = _part(".".join(rel.parts))
        for target in _imports(path):
            there = _part(target)
            if there != here and RANKS[there] >= RANKS[here]:
                wrong.append(f"{rel} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_no_private_module_of_another_part_is_imported() -> None:
    """``exitnas.<part>._module`` is that part's business: other parts import its public names."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        here = _part(".".join(rel.parts))
        for target in _imports(path):
            parts = target.split(".")
            if len(parts) > 2 and parts[2].startswith("_") and _part(target) != here:
                wrong.append(f"{rel} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_part() -> None:
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        assert _part(".".join(rel.parts)) in RANKS
