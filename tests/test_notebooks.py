"""The notebooks in notebooks/ run top to bottom without an error, and are stored clean."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: the real data each notebook reads
NEEDS = {
    "l1448_walkthrough.ipynb": "l1448_13co.fits",
    "climate_walkthrough.ipynb": "HISTALP_oetztal.nc",
}


def _kernel_available() -> bool:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        KernelSpecManager().get_kernel_spec("python3")
    except Exception:
        return False
    return True


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip the outputs"


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_runs(name, data_dir, monkeypatch):
    if not (data_dir / NEEDS[name]).exists():
        pytest.skip(f"{data_dir / NEEDS[name]} is absent")
    if not _kernel_available():
        pytest.skip("no 'python3' Jupyter kernel: pip install ipykernel")
    monkeypatch.setenv("XARRAY_MODELFIT_DATA", str(data_dir))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell that failed
    elapsed = time.perf_counter() - start
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    assert elapsed < 120, f"{name} took {elapsed:.0f} s; keep it under a minute"
