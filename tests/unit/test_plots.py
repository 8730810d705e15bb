import pytest

from icon2_lens.directions.criteria import Criterion
from icon2_lens.directions.extract import ExtractConfig, extract_criterion
from icon2_lens.directions.plots import (
    plot_criterion_cosines,
    plot_layer_cosines,
    plot_layer_selection,
    plot_projection_hist,
    plot_scatter,
    plot_summary,
)
from icon2_lens.directions.results import ExtractionResult
from icon2_lens.figures import write_figures

TRAIN = [
    "what is a cat ?",
    "write a poem about the dog",
    "how do i save money ?",
    "tell me a story",
]
HELD = ["write a short email", "what is a bird ?"]


@pytest.fixture
def result(tiny):
    cfg = ExtractConfig(method="pca_symmetric", n_instructions=4, n_heldout=2)
    out = ExtractionResult(config=cfg)
    for name, pos, neg in (
        ("kind", "you are kind", "you are rude"),
        ("honest", "you are honest", "you are a liar"),
    ):
        crit = Criterion(name=name, positive=pos, negative=neg)
        out.results[name] = extract_criterion(
            tiny, crit, config=cfg, train=TRAIN, heldout=HELD, progress=False
        )
    return out


def test_figures_have_expected_traces(result, tiny):
    res = result.results["kind"]
    fig = plot_layer_selection(res.table, res.interval)
    assert len(fig.data) == 4 and fig.layout.xaxis.title.text == "layer"
    assert any("recommended" in (a.text or "") for a in fig.layout.annotations)
    assert len(plot_scatter(res, layer=1).data) == 4
    assert (
        plot_scatter(res, layer=1, axes="pca").layout.xaxis.title.text == "PC1 of the activations"
    )
    with pytest.raises(ValueError, match="axes"):
        plot_scatter(res, layer=1, axes="tsne")
    assert len(plot_projection_hist(res, layer=1).data) == 2
    heat = plot_layer_cosines(res.directions)
    assert heat.data[0].z.shape == (tiny.cfg.n_layers, tiny.cfg.n_layers)
    cos = plot_criterion_cosines(result.criterion_cosines())
    assert len(cos.layout.sliders[0].steps) == tiny.cfg.n_layers
    assert len(plot_summary(result).data) == 6  # 2 criteria x (2 panels + interval bar)


def test_cosine_heatmap_diagonal_is_one(result):
    z = plot_layer_cosines(result.results["kind"].directions).data[0].z
    assert all(abs(z[i][i] - 1) < 1e-5 for i in range(len(z)))


def test_write_html_and_png_offline(result, tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    # PNG export must not need the network (kaleido drives a local Chromium)
    monkeypatch.setattr(socket, "create_connection", no_network)
    res = result.results["kind"]
    paths = write_figures({"sel": plot_layer_selection(res.table, res.interval)}, tmp_path)
    png = tmp_path / "sel.png"
    assert png in paths and (tmp_path / "sel.html").is_file()
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000  # pages work offline
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_png_failure_names_the_fix(result, tmp_path, monkeypatch):
    import kaleido

    def fail(*a, **k):
        raise RuntimeError("no chrome")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", fail)
    res = result.results["kind"]
    with pytest.raises(RuntimeError, match="install.sh"):
        write_figures({"sel": plot_layer_selection(res.table, res.interval)}, tmp_path)
    assert (tmp_path / "sel.html").is_file()  # the HTML written before the failure is kept


def test_png_export_without_any_network(tmp_path):
    """Render in a network namespace with no interfaces: Chromium gets no network at all."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs unshare and root)")
    script = (
        "import plotly.graph_objects as go, sys\n"
        "from icon2_lens.figures import write_figures\n"
        "f = go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3])); f.update_layout(width=600, height=400)\n"
        "write_figures({'x': f}, sys.argv[1], html=False)\n"
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = (tmp_path / "x.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # 600 x 400 layout at scale 1.5
    assert int.from_bytes(png[16:20], "big") == 900 and int.from_bytes(png[20:24], "big") == 600
