"""Plotly figures for choosing layers and inspecting directions.

Every function returns a ``plotly.graph_objects.Figure`` and never shows it; :func:`write_figures`
saves figures as HTML (plotly.js embedded, works offline) and PNG (through kaleido and a local
Chromium). Layers are on the x axis, hook names in the hover text.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"criterion": "toy", "layer": [0, 1, 2], "hook_name": ["a", "b", "c"],
    ...                   "heldout_paired_acc": [1.0, 1.0, 1.0], "heldout_single_acc": [.6, .9, .7],
    ...                   "separation": [1.0, 3.0, 2.0], "explained_variance": [.2, .5, .4]})
    >>> fig = plot_layer_selection(t, (1, 1))
    >>> len(fig.data), fig.layout.xaxis.title.text
    (4, 'layer')
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "plot_layer_selection",
    "plot_summary",
    "plot_scatter",
    "plot_projection_hist",
    "plot_layer_cosines",
    "plot_criterion_cosines",
    "plot_consistency",
    "write_figures",
    "write_figures_or_warn",
]

logger = logging.getLogger(__name__)

_COLORS = {"pos": "#1f77b4", "neg": "#d62728"}


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError as e:  # pragma: no cover - plotly is a core dependency
        raise ImportError("plots need plotly: pip install plotly") from e
    return go


def plot_layer_selection(
    table: pd.DataFrame, interval: tuple[int, int] | None = None, *, title: str | None = None,
    template: str = "plotly_white",
) -> "go.Figure":
    """Held-out accuracies, separation and explained variance against layer, interval shaded.

    Args:
        table: One criterion's rows of :func:`icon2_lens.diagnostics.layer_table`.
        interval: Recommended ``(first, last)`` layers, shaded.
        title: Figure title (default: the criterion).
        template: Plotly template.
    """
    from plotly.subplots import make_subplots

    go = _go()
    crit = str(table["criterion"].iloc[0]) if "criterion" in table else ""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    hover = table["hook_name"] if "hook_name" in table else None
    for col, name, dash in (
        ("heldout_paired_acc", "held-out paired accuracy", "solid"),
        ("heldout_single_acc", "held-out single-activation accuracy", "dash"),
        ("explained_variance", "explained variance (direction)", "dot"),
    ):
        fig.add_trace(go.Scatter(x=table["layer"], y=table[col], name=name, mode="lines+markers",
                                 line={"dash": dash}, hovertext=hover), secondary_y=False)
    fig.add_trace(go.Scatter(x=table["layer"], y=table["separation"], name="separation (d′)",
                             mode="lines+markers", hovertext=hover), secondary_y=True)
    if interval is not None:
        fig.add_vrect(x0=interval[0] - 0.5, x1=interval[1] + 0.5, fillcolor="green", opacity=0.12,
                      line_width=0, annotation_text=f"recommended {interval[0]}–{interval[1]}",
                      annotation_position="bottom left")
    fig.update_layout(template=template, title=title or f"Layer selection: {crit}",
                      legend={"orientation": "h", "y": -0.2}, height=460, width=820)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="accuracy / explained variance", range=[0, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="separation (gap / pooled std)", secondary_y=True, showgrid=False,
                     rangemode="tozero")
    return fig


def plot_summary(result: Any, *, template: str = "plotly_white") -> "go.Figure":
    """Held-out single-activation accuracy and separation of every criterion against layer."""
    from plotly.subplots import make_subplots

    go = _go()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out single-activation accuracy",
                                                        "separation (d′)"))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for i, (name, res) in enumerate(result.results.items()):
        color = palette[i % len(palette)]
        t = res.table
        for col, c in (("heldout_single_acc", 1), ("separation", 2)):
            fig.add_trace(go.Scatter(x=t["layer"], y=t[col], name=name, legendgroup=name,
                                     showlegend=c == 1, line={"color": color}, mode="lines+markers",
                                     hovertext=t["hook_name"]), row=1, col=c)
        lo, hi = res.interval
        # each criterion's recommended interval as a bar under the curves
        y = -0.04 - 0.035 * i
        fig.add_trace(go.Scatter(x=[lo - 0.4, hi + 0.4], y=[y, y], mode="lines", line={"color": color, "width": 7},
                                 legendgroup=name, showlegend=False,
                                 hovertext=f"{name}: recommended {lo}–{hi}", hoverinfo="text"), row=1, col=1)
    n = len(result.results)
    fig.update_yaxes(range=[-0.06 - 0.035 * n, 1.02], row=1, col=1)
    fig.update_layout(template=template, height=440, width=1100,
                      title="Layer selection, all criteria (bars: recommended intervals)")
    fig.update_xaxes(title_text="layer")
    return fig


def _layer_acts(res: Any, layer: int) -> tuple:
    acts = res.activations
    if acts is None:
        raise ValueError("this result holds no activations (it was loaded from disk); re-run extraction")
    j = res.directions.index(layer)
    return acts.pos[:, j], acts.neg[:, j], acts.pos_heldout[:, j], acts.neg_heldout[:, j], j


def plot_scatter(res: Any, layer: int, *, axes: str = "direction", template: str = "plotly_white") -> "go.Figure":
    """Positive vs negative activations at ``layer`` in two dimensions.

    Args:
        res: A :class:`~icon2_lens.extract.CriterionResult` that holds activations.
        layer: Layer to show.
        axes: ``"direction"``: x = projection on the criterion's direction, y = first principal
            component of what the direction leaves out (how much of the spread the direction
            explains); ``"pca"``: the first two principal components of all activations.
        template: Plotly template.
    """
    go = _go()
    if axes not in ("direction", "pca"):
        raise ValueError(f"axes must be 'direction' or 'pca', got {axes!r}")
    pos, neg, pos_h, neg_h, j = _layer_acts(res, layer)
    allx = torch.cat([pos, neg, pos_h, neg_h]).to(torch.float64)
    mean = allx.mean(0)
    centred = allx - mean
    if axes == "direction":
        u = res.directions.vectors[j].double()
        rest = centred - (centred @ u)[:, None] * u[None]
        basis = torch.stack([u, torch.linalg.svd(rest, full_matrices=False)[2][0]])
        labels = ("projection on the direction", "top principal component of the remainder")
    else:
        basis = torch.linalg.svd(centred, full_matrices=False)[2][:2]
        labels = ("PC1 of the activations", "PC2 of the activations")
    fig = go.Figure()
    for acts, name, color, symbol in ((pos, "positive (train)", _COLORS["pos"], "circle"),
                                      (neg, "negative (train)", _COLORS["neg"], "circle"),
                                      (pos_h, "positive (held-out)", _COLORS["pos"], "x"),
                                      (neg_h, "negative (held-out)", _COLORS["neg"], "x")):
        xy = (acts.double() - mean) @ basis.T
        fig.add_trace(go.Scatter(x=xy[:, 0].numpy(), y=xy[:, 1].numpy(), mode="markers", name=name,
                                 marker={"color": color, "symbol": symbol, "size": 6, "opacity": 0.6}))
    fig.update_layout(template=template, height=480, width=620,
                      title=f"{res.directions.criterion}: activations at layer {layer}")
    fig.update_xaxes(title_text=labels[0])
    fig.update_yaxes(title_text=labels[1])
    return fig


def plot_projection_hist(res: Any, layer: int, *, template: str = "plotly_white") -> "go.Figure":
    """Histograms of held-out positive and negative projections on the direction at ``layer``."""
    go = _go()
    _, _, pos_h, neg_h, j = _layer_acts(res, layer)
    u = res.directions.vectors[j]
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=(pos_h @ u).numpy(), name="positive prompt", opacity=0.6,
                               marker_color=_COLORS["pos"]))
    fig.add_trace(go.Histogram(x=(neg_h @ u).numpy(), name="negative prompt", opacity=0.6,
                               marker_color=_COLORS["neg"]))
    fig.update_layout(template=template, barmode="overlay", height=400, width=620,
                      title=f"{res.directions.criterion}: held-out projections at layer {layer}")
    fig.update_xaxes(title_text="projection on the direction")
    fig.update_yaxes(title_text="count")
    return fig


def plot_layer_cosines(ds: Any, *, template: str = "plotly_white") -> "go.Figure":
    """Heatmap of the cosine between one criterion's directions at every pair of layers."""
    from .diagnostics import layer_cosines

    go = _go()
    m = layer_cosines(ds)
    fig = go.Figure(go.Heatmap(z=m.values, x=m.columns, y=m.index, zmin=-1, zmax=1, colorscale="RdBu",
                               reversescale=True, colorbar={"title": "cos"}))
    fig.update_layout(template=template, height=520, width=580,
                      title=f"{ds.criterion}: cosine between layers' directions")
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def plot_criterion_cosines(cos: pd.DataFrame, *, template: str = "plotly_white") -> "go.Figure":
    """Cosine between every pair of criteria, one heatmap per layer (slider over layers)."""
    go = _go()
    names = list(dict.fromkeys(cos["criterion_a"]))
    layers = sorted(cos["layer"].unique())
    frames = []
    for layer in layers:
        sub = cos[cos["layer"] == layer].pivot(index="criterion_a", columns="criterion_b", values="cosine")
        frames.append(sub.loc[names, names].values)
    mid = len(layers) // 2
    fig = go.Figure(go.Heatmap(z=frames[mid], x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu",
                               reversescale=True, colorbar={"title": "cos"}, texttemplate="%{z:.2f}"))
    steps = [{"method": "restyle", "args": [{"z": [z]}], "label": str(layer)} for layer, z in zip(layers, frames)]
    fig.update_layout(template=template, height=480, width=600,
                      title="Cosine between criteria's directions (slider: layer)",
                      sliders=[{"active": mid, "steps": steps, "currentvalue": {"prefix": "layer "}}])
    return fig


def plot_consistency(scores: Any, selection: Any, *, bins: int = 40, template: str = "plotly_white") -> "go.Figure":
    """Score distribution per criterion: instructions kept for that criterion vs all the others.

    Args:
        scores: A :class:`~icon2_lens.consistency.ConsistencyScores`.
        selection: The :class:`~icon2_lens.consistency.Selection` made from it.
    """
    from plotly.subplots import make_subplots

    go = _go()
    crit = scores.best_criterion
    kept = set(selection.kept)
    fig = make_subplots(rows=1, cols=len(scores.criteria), subplot_titles=list(scores.criteria),
                        shared_yaxes=True)
    for j, name in enumerate(scores.criteria):
        col = scores.scores[:, j].tolist()
        groups = {
            f"kept, steered along {name}": [v for i, v in enumerate(col) if i in kept and crit[i] == name],
            "not kept for it": [v for i, v in enumerate(col) if not (i in kept and crit[i] == name)],
        }
        for (label, values), color in zip(groups.items(), ("#2ca02c", "#7f7f7f")):
            fig.add_trace(go.Histogram(x=values, nbinsx=bins, name=label, marker_color=color, opacity=0.7,
                                       legendgroup=label, showlegend=j == 0), row=1, col=j + 1)
        fig.update_xaxes(title_text=f"score ({scores.settings.get('scoring', 'dot')})", row=1, col=j + 1)
    fig.update_layout(barmode="overlay", template=template, height=380, width=max(500, 320 * len(scores.criteria)),
                      title=f"Inherent consistency: {len(kept)} of {len(crit)} kept ({selection.rule} {selection.value:g})")
    fig.update_yaxes(title_text="instructions", row=1, col=1)
    return fig


def _export_png(figs: list, paths: list[Path], *, scale: float) -> None:
    """Render figures to PNG with kaleido in one browser session, fully offline.

    plotly.js comes from the installed plotly package; MathJax (kaleido would fetch it from a
    CDN) is turned off, since no label here uses LaTeX. The layout's size is passed explicitly
    because kaleido otherwise uses its default 700 x 500.
    """
    import kaleido

    specs = [
        {
            "fig": fig.to_plotly_json(),
            "path": path,
            "opts": {"format": "png", "width": fig.layout.width or 800,
                     "height": fig.layout.height or 500, "scale": scale},
        }
        for fig, path in zip(figs, paths)
    ]
    kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})


def write_figures(figs: Mapping[str, "go.Figure"], folder: str | Path, *, png: bool = True,
                  html: bool = True, scale: float = 1.5) -> list[Path]:
    """Write each figure as ``<name>.html`` (plotly.js in a shared ``plotly.min.js`` beside the
    pages, so they open offline) and, if ``png``, ``<name>.png``.

    PNG export uses kaleido, which drives a local Chrome/Chromium (Debian package ``chromium``;
    ``scripts/install.sh`` installs it). Raises a ``RuntimeError`` naming that fix if it fails.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items() if html else ():
        path = folder / f"{name}.html"
        # "directory": one shared plotly.min.js beside the pages; works offline, keeps pages small
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        written.append(path)
    if png and figs:
        paths = [folder / f"{name}.png" for name in figs]
        try:
            _export_png(list(figs.values()), paths, scale=scale)
        except Exception as e:
            raise RuntimeError(
                f"PNG export failed ({type(e).__name__}: {e}). It needs kaleido>=1 and a local "
                "Chrome/Chromium: run scripts/install.sh, or 'apt-get install chromium', or set "
                "BROWSER_PATH to a Chrome binary; pass png=False (CLI: --no-png) to skip PNGs."
            ) from e
        written.extend(paths)
    return written


def write_figures_or_warn(figs: Mapping[str, "go.Figure"], folder: str | Path, *, png: bool = True) -> list[Path]:
    """:func:`write_figures`, but a failed PNG export only logs a warning (the HTML files stay)."""
    try:
        return write_figures(figs, folder, png=png)
    except RuntimeError as e:
        logger.warning("%s — wrote HTML figures only", e)
        return write_figures(figs, folder, png=False)
