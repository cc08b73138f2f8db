"""A notebook run the interactive way, as JupyterLab runs it: the user sets params_file in the first code
cell and runs every cell in one kernel (nbclient, no papermill), here on params/ci.yaml."""
import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, ci_params


@pytest.mark.slow
def test_first_notebook_runs_interactively_on_ci_params(tmp_path):
    params = ci_params(tmp_path)
    nb = nbformat.read(ROOT / "notebooks" / "00_base.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source.lstrip().startswith("params_file")
    # what a user edits in Jupyter: the first line of the parameters cell
    cell.source = cell.source.replace(cell.source.splitlines()[0], f"params_file = {str(params)!r}", 1)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()  # Jupyter's cwd
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    run = tmp_path / "runs" / "ci"
    assert (run / "models" / "base" / "model.safetensors").exists()
    assert "summary" in json.loads((run / "metrics" / "train_base.json").read_text()) or (run / "metrics").exists()
