"""Execute every notebook in notebooks/ top to bottom (real model, small parameters)."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, request):
    import nbformat
    from nbclient import NotebookClient

    # figures go to a temporary folder, so running the tests never rewrites figures/
    monkeypatch.setenv("ICON2_LENS_FIGURES_DIR", str(tmp_path))
    if "03_" in path.name:
        # notebook 03 reads a finished experiment: a tiny one, made here on a tiny model
        from icon2_lens.runs.experiment import run_experiment

        request.getfixturevalue("lenient_cleaning")
        model_dir = request.getfixturevalue("tiny_experiment_model")
        cfg = request.getfixturevalue("tiny_experiment_config")(model_dir)
        run_experiment(cfg, tmp_path / "experiment", progress=False, png=False)
        monkeypatch.setenv("ICON2_LENS_EXPERIMENT", str(tmp_path / "experiment"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    if "01_" in path.name:
        assert (tmp_path / "layer_selection_all.png").is_file()
