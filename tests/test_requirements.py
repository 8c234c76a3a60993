"""Every module the kit's code imports is installed by the kit's own files.

CI builds a fresh virtual environment from ``requirements.txt`` for each run, so
a module that only a hand-made install provides fails there; this test fails
first, anywhere, and names the module, the file that imports it and the file to
add it to. It reads the import statements (``ast``) of ``atlas_ramp/``,
``tests/``, ``bench/``, ``submissions/`` and the kit's scripts, and checks each
imported distribution against what ``requirements.txt`` pulls in (its
requirements and theirs, as installed). Modules that only the RAMP server's
environment has are listed in ``SERVER_ONLY`` with the requirements file that
installs them; imports guarded by ``except ImportError`` are optional.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("atlas_ramp", "tests", "bench", "submissions")
SCRIPTS = ("problem.py", "download_data.py")

# Imported only by code that runs in the RAMP server's environment (ramp-board's
# dispatcher, its workers, the server-side test helpers): module -> (requirement,
# the requirements file that must name it).
SERVER_ONLY = {
    "ramp_database": ("ramp-database", "requirements-server.txt"),
    "ramp_engine": ("ramp-engine", "requirements-server.txt"),
    "ramp_frontend": ("ramp-frontend", "requirements-server.txt"),
    "ramp_utils": ("ramp-utils", "requirements-server.txt"),
    "dask": ("dask", "requirements-server.txt"),
    "distributed": ("distributed", "requirements-server.txt"),
    "sqlalchemy": ("sqlalchemy", "requirements-server.txt"),
    "psycopg2": ("psycopg2-binary", "requirements-server.txt"),
}


def _python_files() -> list[Path]:
    files = [REPO / name for name in SCRIPTS]
    for folder in SCANNED:
        files += sorted((REPO / folder).rglob("*.py"))
    return [path for path in files if "training_output" not in path.parts]


def _first_party() -> set[str]:
    """Names importable from the repository itself (the kit, tests, scripts)."""
    names = {path.stem for path in REPO.glob("*.py")}
    names |= {path.name for path in REPO.iterdir() if (path / "__init__.py").exists()}
    for folder in ("tests", "bench"):  # scripts there import their neighbours
        names |= {path.stem for path in (REPO / folder).glob("*.py")}
    return names


def _guards_import_error(handler: ast.ExceptHandler) -> bool:
    names = []
    if isinstance(handler.type, ast.Name):
        names = [handler.type.id]
    elif isinstance(handler.type, ast.Tuple):
        names = [elt.id for elt in handler.type.elts if isinstance(elt, ast.Name)]
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports, optional imports left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(map(_guards_import_error, node.handlers)):
            optional |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    modules = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _requirement_lines(path: Path) -> list[str]:
    """The requirement strings of a pip requirements file (``-r`` followed)."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += _requirement_lines(path.parent / line.split(maxsplit=1)[1])
        elif line.startswith("-e ") or line in {".", "./"}:
            lines.append("atlas-ramp")  # the kit itself, installed from this repo
        elif not line.startswith("-"):
            lines.append(line)
    return lines


def provided_by(requirements_file: Path) -> set[str]:
    """Canonical names of every distribution that installing the file pulls in."""
    pending = [Requirement(line) for line in _requirement_lines(requirements_file)]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # reported by the test as "not installed" if imported
        for text in requires:
            try:
                needed = Requirement(text)
            except InvalidRequirement:
                continue
            extras = {extra: "" for extra in requirement.extras} or {"extra": ""}
            if needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in extras
            ):
                pending.append(needed)
    return seen


def test_every_imported_module_is_installed_by_the_kits_files():
    stdlib = set(sys.stdlib_module_names)
    first_party = _first_party()
    kit = provided_by(REPO / "requirements.txt")
    distributions = metadata.packages_distributions()
    problems = []
    for path in _python_files():
        for module in sorted(imported_modules(path) - stdlib - first_party):
            where = path.relative_to(REPO)
            if module in SERVER_ONLY:
                continue  # checked by the test below
            owners = {canonicalize_name(d) for d in distributions.get(module, [])}
            if not owners:
                problems.append(
                    f"{where} imports {module!r}, which is not installed in this "
                    "environment: add the distribution that provides it to "
                    "requirements.txt (or, if only the RAMP server imports it, to "
                    "requirements-server.txt and SERVER_ONLY in this test)."
                )
            elif not owners & kit:
                problems.append(
                    f"{where} imports {module!r} (distribution "
                    f"{', '.join(sorted(owners))}), which requirements.txt does not "
                    "install: it is only here by hand. Add it to requirements.txt."
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(SERVER_ONLY))
def test_server_only_modules_are_named_in_their_requirements_file(module):
    requirement, filename = SERVER_ONLY[module]
    names = {
        canonicalize_name(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0])
        for line in _requirement_lines(REPO / filename)
    }
    assert canonicalize_name(requirement) in names, (
        f"{module!r} is listed as server-only, but {filename} does not install "
        f"{requirement!r}: add it there."
    )


def test_the_scan_sees_imports_at_any_depth_and_skips_guarded_ones(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "import os.path\n"
        "from yaml import safe_load\n"
        "def f():\n"
        "    import toml_thing\n"
        "try:\n"
        "    import optional_thing\n"
        "except ImportError:\n"
        "    optional_thing = None\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert imported_modules(source) == {"os", "yaml", "toml_thing"}


def test_the_server_and_the_pools_workers_pin_dask_alike():
    def pins(filename):
        found = {}
        for line in _requirement_lines(REPO / filename):
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = str(requirement.specifier)
        return found

    server, worker = pins("requirements-server.txt"), pins("requirements-worker.txt")
    for name in ("dask", "distributed"):
        assert server.get(name, "").startswith("=="), f"pin {name} on the server"
        assert worker.get(name) == server[name], (
            f"requirements-worker.txt asks {name}{worker.get(name)}, the server "
            f"{name}{server[name]}: dask wants one version on every machine."
        )
