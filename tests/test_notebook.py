"""The study notebook runs headless, top to bottom, on a tiny synthetic set of records (so it cannot rot)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from test_study import make_study

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "dropout_vs_early_stopping.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert any("REGBENCH_STUDY_DIR" in c.source for c in code)


def test_notebook_executes_on_synthetic_records(tmp_path, monkeypatch):
    # mnist1d/mlp at two sizes and digits/mlp, with mechanism measurements; every other setting is missing
    d = make_study(tmp_path, settings=[("mnist1d", "mlp", None), ("mnist1d", "mlp", 500), ("digits", "mlp", None)],
                   arms=("none", "dropout", "early_stop"), seeds=range(3), epochs=2)
    monkeypatch.setenv("REGBENCH_STUDY_DIR", str(d))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    def text(cell) -> str:
        return "".join(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)

    cells = {c.get("id"): c for c in nb.cells}
    setup = text(cells["setup"])
    assert f"python: {sys.executable}" in setup, "the kernel must be this interpreter (the venv's python)"
    assert str(d) in setup
    assert "27 records, 27 ok" in text(cells["load"])  # 3 settings x 3 arms x 3 seeds
    errors = [(c.get("id"), o.get("ename"), o.get("evalue")) for c in nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors  # a figure that fails to render is an error output, not a failed cell
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 4  # accuracy grid, size effect, >= 1 mechanism panel, gap
    assert "500" in text(cells["fig2"]) and "3500" in text(cells["fig2"])


@pytest.fixture(autouse=True)
def _no_leftover_outputs():
    """Executing works on an in-memory copy: the committed notebook is never rewritten."""
    before = NOTEBOOK.read_bytes()
    yield
    assert NOTEBOOK.read_bytes() == before
