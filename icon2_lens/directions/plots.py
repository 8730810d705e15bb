"""Plotly figures for choosing layers and inspecting directions.

Every function returns a ``plotly.graph_objects.Figure`` and never shows it
(:func:`icon2_lens.figures.write_figures` saves them). Layers are on the x axis, hook names in
the hover text.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"criterion": "toy", "layer": [0, 1, 2], "hook_name": ["a", "b", "c"],
    ...                   "heldout_paired_acc": [1.0, 1.0, 1.0], "heldout_single_acc": [.6, .9, .7],
    ...                   "separation": [1.0, 3.0, 2.0], "explained_variance": [.2, .5, .4]})
    >>> fig = plot_layer_selection(t, (1, 1))
    >>> len(fig.data), fig.layout.xaxis.title.text
    (4, 'layer')
"""

from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from icon2_lens.figures import PALETTE, plotly_go

from .diagnostics import layer_cosines

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "plot_layer_selection",
    "plot_summary",
    "plot_scatter",
    "plot_projection_hist",
    "plot_layer_cosines",
    "plot_criterion_cosines",
]

_COLORS = {"pos": "#1f77b4", "neg": "#d62728"}


def plot_layer_selection(
    table: pd.DataFrame,
    interval: tuple[int, int] | None = None,
    *,
    title: str | None = None,
    template: str = "plotly_white",
) -> "go.Figure":
    """Held-out accuracies, separation and explained variance against layer, interval shaded.

    When the wording check ran, its lowest paired accuracy over the other wordings is drawn too,
    and the layers it flags (below the threshold: the direction reads the wording there) are
    marked with a red cross.

    Args:
        table: One criterion's rows of :func:`icon2_lens.directions.diagnostics.layer_table`.
        interval: Recommended ``(first, last)`` layers, shaded.
        title: Figure title (default: the criterion).
        template: Plotly template.
    """
    from plotly.subplots import make_subplots

    go = plotly_go()
    crit = str(table["criterion"].iloc[0]) if "criterion" in table else ""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    hover = table["hook_name"] if "hook_name" in table else None
    for col, name, dash in (
        ("heldout_paired_acc", "held-out paired accuracy", "solid"),
        ("heldout_single_acc", "held-out single-activation accuracy", "dash"),
        ("explained_variance", "explained variance (direction)", "dot"),
    ):
        fig.add_trace(
            go.Scatter(
                x=table["layer"],
                y=table[col],
                name=name,
                mode="lines+markers",
                line={"dash": dash},
                hovertext=hover,
            ),
            secondary_y=False,
        )
    if "wording_min_acc" in table:
        fig.add_trace(
            go.Scatter(
                x=table["layer"],
                y=table["wording_min_acc"],
                name="lowest paired accuracy, other wordings",
                mode="lines+markers",
                line={"dash": "dashdot", "color": "#7f7f7f"},
                hovertext=table.get("wording_worst"),
            ),
            secondary_y=False,
        )
        flagged = table[table["wording_flag"].astype(bool)]
        if len(flagged):
            fig.add_trace(
                go.Scatter(
                    x=flagged["layer"],
                    y=flagged["wording_min_acc"],
                    name="reads the wording (flagged)",
                    mode="markers",
                    marker={"symbol": "x", "size": 11, "color": "#d62728"},
                ),
                secondary_y=False,
            )
    fig.add_trace(
        go.Scatter(
            x=table["layer"],
            y=table["separation"],
            name="separation (d′)",
            mode="lines+markers",
            hovertext=hover,
        ),
        secondary_y=True,
    )
    if interval is not None:
        fig.add_vrect(
            x0=interval[0] - 0.5,
            x1=interval[1] + 0.5,
            fillcolor="green",
            opacity=0.12,
            line_width=0,
            annotation_text=f"recommended {interval[0]}–{interval[1]}",
            annotation_position="bottom left",
        )
    fig.update_layout(
        template=template,
        title=title or f"Layer selection: {crit}",
        legend={"orientation": "h", "y": -0.2},
        height=460,
        width=820,
    )
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="accuracy / explained variance", range=[0, 1.05], secondary_y=False)
    fig.update_yaxes(
        title_text="separation (gap / pooled std)",
        secondary_y=True,
        showgrid=False,
        rangemode="tozero",
    )
    return fig


def plot_summary(result: Any, *, template: str = "plotly_white") -> "go.Figure":
    """Held-out single-activation accuracy and separation of every criterion against layer."""
    from plotly.subplots import make_subplots

    go = plotly_go()
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("held-out single-activation accuracy", "separation (d′)")
    )
    palette = PALETTE
    for i, (name, res) in enumerate(result.results.items()):
        color = palette[i % len(palette)]
        t = res.table
        for col, c in (("heldout_single_acc", 1), ("separation", 2)):
            fig.add_trace(
                go.Scatter(
                    x=t["layer"],
                    y=t[col],
                    name=name,
                    legendgroup=name,
                    showlegend=c == 1,
                    line={"color": color},
                    mode="lines+markers",
                    hovertext=t["hook_name"],
                ),
                row=1,
                col=c,
            )
        lo, hi = res.interval
        # each criterion's recommended interval as a bar under the curves
        y = -0.04 - 0.035 * i
        fig.add_trace(
            go.Scatter(
                x=[lo - 0.4, hi + 0.4],
                y=[y, y],
                mode="lines",
                line={"color": color, "width": 7},
                legendgroup=name,
                showlegend=False,
                hovertext=f"{name}: recommended {lo}–{hi}",
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )
    n = len(result.results)
    fig.update_yaxes(range=[-0.06 - 0.035 * n, 1.02], row=1, col=1)
    fig.update_layout(
        template=template,
        height=440,
        width=1100,
        title="Layer selection, all criteria (bars: recommended intervals)",
    )
    fig.update_xaxes(title_text="layer")
    return fig


def _layer_acts(res: Any, layer: int) -> tuple:
    acts = res.activations
    if acts is None:
        raise ValueError(
            "this result holds no activations (it was loaded from disk); re-run extraction"
        )
    j = res.directions.index(layer)
    return acts.pos[:, j], acts.neg[:, j], acts.pos_heldout[:, j], acts.neg_heldout[:, j], j


def plot_scatter(
    res: Any, layer: int, *, axes: str = "direction", template: str = "plotly_white"
) -> "go.Figure":
    """Positive vs negative activations at ``layer`` in two dimensions.

    Args:
        res: A :class:`~icon2_lens.directions.extract.CriterionResult` that holds activations.
        layer: Layer to show.
        axes: ``"direction"``: x = projection on the criterion's direction, y = first principal
            component of what the direction leaves out (how much of the spread the direction
            explains); ``"pca"``: the first two principal components of all activations.
        template: Plotly template.
    """
    go = plotly_go()
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
    for acts, name, color, symbol in (
        (pos, "positive (train)", _COLORS["pos"], "circle"),
        (neg, "negative (train)", _COLORS["neg"], "circle"),
        (pos_h, "positive (held-out)", _COLORS["pos"], "x"),
        (neg_h, "negative (held-out)", _COLORS["neg"], "x"),
    ):
        xy = (acts.double() - mean) @ basis.T
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0].numpy(),
                y=xy[:, 1].numpy(),
                mode="markers",
                name=name,
                marker={"color": color, "symbol": symbol, "size": 6, "opacity": 0.6},
            )
        )
    fig.update_layout(
        template=template,
        height=480,
        width=620,
        title=f"{res.directions.criterion}: activations at layer {layer}",
    )
    fig.update_xaxes(title_text=labels[0])
    fig.update_yaxes(title_text=labels[1])
    return fig


def plot_projection_hist(res: Any, layer: int, *, template: str = "plotly_white") -> "go.Figure":
    """Histograms of held-out positive and negative projections on the direction at ``layer``."""
    go = plotly_go()
    _, _, pos_h, neg_h, j = _layer_acts(res, layer)
    u = res.directions.vectors[j]
    fig = go.Figure()
    fig.add_trace(
        go.Histogram(
            x=(pos_h @ u).numpy(), name="positive prompt", opacity=0.6, marker_color=_COLORS["pos"]
        )
    )
    fig.add_trace(
        go.Histogram(
            x=(neg_h @ u).numpy(), name="negative prompt", opacity=0.6, marker_color=_COLORS["neg"]
        )
    )
    fig.update_layout(
        template=template,
        barmode="overlay",
        height=400,
        width=620,
        title=f"{res.directions.criterion}: held-out projections at layer {layer}",
    )
    fig.update_xaxes(title_text="projection on the direction")
    fig.update_yaxes(title_text="count")
    return fig


def plot_layer_cosines(ds: Any, *, template: str = "plotly_white") -> "go.Figure":
    """Heatmap of the cosine between one criterion's directions at every pair of layers."""
    go = plotly_go()
    m = layer_cosines(ds)
    fig = go.Figure(
        go.Heatmap(
            z=m.values,
            x=m.columns,
            y=m.index,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            colorbar={"title": "cos"},
        )
    )
    fig.update_layout(
        template=template,
        height=520,
        width=580,
        title=f"{ds.criterion}: cosine between layers' directions",
    )
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def plot_criterion_cosines(cos: pd.DataFrame, *, template: str = "plotly_white") -> "go.Figure":
    """Cosine between every pair of criteria, one heatmap per layer (slider over layers)."""
    go = plotly_go()
    names = list(dict.fromkeys(cos["criterion_a"]))
    layers = sorted(cos["layer"].unique())
    frames = []
    for layer in layers:
        sub = cos[cos["layer"] == layer].pivot(
            index="criterion_a", columns="criterion_b", values="cosine"
        )
        frames.append(sub.loc[names, names].values)
    mid = len(layers) // 2
    fig = go.Figure(
        go.Heatmap(
            z=frames[mid],
            x=names,
            y=names,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            colorbar={"title": "cos"},
            texttemplate="%{z:.2f}",
        )
    )
    steps = [
        {"method": "restyle", "args": [{"z": [z]}], "label": str(layer)}
        for layer, z in zip(layers, frames)
    ]
    fig.update_layout(
        template=template,
        height=480,
        width=600,
        title="Cosine between criteria's directions (slider: layer)",
        sliders=[{"active": mid, "steps": steps, "currentvalue": {"prefix": "layer "}}],
    )
    return fig
