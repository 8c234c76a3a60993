"""The package's folders are its map: groups import downwards only, modules stay short.

At the top of ``atlas_ramp``: the data on disk, the challenge and plumbing
(what ``problem.py`` and the submissions import). ``results/``, ``course/`` and
``cnn/`` use them; nothing at the top, in ``synthetic/`` or in ``archive/``
imports those three, ``results`` never imports ``course`` (nor the reverse), and
only ``cnn`` imports torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "atlas_ramp"
MAX_LINES = 500
UPPER_GROUPS = {"results", "course", "cnn"}


def _group(path: Path) -> str:
    """``results``, ``course``, ... for a module in a sub-package; ``top`` else."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else "top"


def _imported(path: Path) -> set[str]:
    """Absolute names of the ``atlas_ramp`` modules and packages ``path`` imports."""
    module = ".".join(("atlas_ramp", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names |= {f"{target}.{alias.name}" for alias in node.names}
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


def _forbidden(group: str) -> set[str]:
    if group in {"top", "synthetic", "archive", "testing"}:
        return UPPER_GROUPS
    return UPPER_GROUPS - {group} if group in {"results", "course"} else set()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downwards(path):
    group = _group(path)
    if path.name == "cli.py":  # imports each command by name, when it runs
        return
    upward = {
        name
        for name in _imported(path)
        for other in _forbidden(group)
        if name == f"atlas_ramp.{other}" or name.startswith(f"atlas_ramp.{other}.")
    }
    assert not upward, f"{path.relative_to(PACKAGE)} ({group}) imports {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_cnn_imports_torch(path):
    if _group(path) == "cnn":
        return
    torch = {name for name in _imported(path) if name.split(".")[0] == "torch"}
    assert not torch, f"{path.relative_to(PACKAGE)} imports torch: move it to cnn/"


def test_no_module_is_over_the_limit():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in MODULES
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}; split by concept"


def test_the_folders_show_the_groups():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {"synthetic", "archive", "results", "course", "cnn", "testing"} <= folders
