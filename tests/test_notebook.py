"""The starting-kit notebook: stored clean, and runs top to bottom.

The notebook runs in a temporary kit folder (the notebook, problem.py and the
starting kit, with ``data`` linked to the small synthetic sample), exactly as a
student runs it from a fresh clone, in a kernel that uses this very interpreter.
"""

import shutil
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "starting_kit.ipynb"
CELL_TIMEOUT_S = 180


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for position, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"Cell {position} of {NOTEBOOK.name} has outputs: clear them before "
                "committing (e.g. `jupyter nbconvert --clear-output --inplace`)."
            )
            assert position > 0 and notebook.cells[position - 1].cell_type == (
                "markdown"
            ), f"Code cell {position} has no markdown cell before it saying why."


def _kernel_manager(folder: Path):
    """A kernel manager whose 'python3' kernel is this interpreter.

    A 'python3' kernelspec installed elsewhere (a user's Jupyter, another
    environment) could run a Python without the kit; this one cannot.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = folder / "kernels"
    write_kernel_spec(kernels / "python3")
    spec_manager = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert spec_manager.get_kernel_spec("python3").argv[0] == sys.executable
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=spec_manager)


def make_kit(folder: Path, data: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    shutil.copy(REPO / "problem.py", folder / "problem.py")
    shutil.copytree(
        REPO / "submissions" / "starting_kit",
        folder / "submissions" / "starting_kit",
        ignore=shutil.ignore_patterns("training_output", "__pycache__"),
    )
    (folder / "data").symlink_to(data, target_is_directory=True)
    return folder


def test_notebook_runs_top_to_bottom(small_sample, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    kit = make_kit(tmp_path / "kit", small_sample)
    monkeypatch.setenv("ATLAS_KIT_DATA", str(kit / "data"))
    monkeypatch.delenv("RAMP_TEST_MODE", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(kit / NOTEBOOK.name, as_version=4)
    client = NotebookClient(
        notebook,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(kit)}},
    )
    # Raises CellExecutionError, naming the cell, on any error; cleanup_kc: shut the
    # kernel down at the end even though the client did not create its manager.
    client.execute(cleanup_kc=True)

    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
    ]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 8, f"expected the notebook's 8 figures, got {len(figures)}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Bagged scores" in text, "the ramp-test cell printed no scores"
    written = kit / "submissions" / "my_first_submission"
    assert (written / "estimator.py").is_file()
    assert (written / "training_output" / "bagged_scores.csv").is_file()
