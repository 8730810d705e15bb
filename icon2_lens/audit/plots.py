"""Figures of the audit (plotly, returned, never shown).

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"criterion": ["toy"] * 2, "layer": [0, 0], "confound": ["length", "apology"], "cosine": [0.5, -0.1]})
    >>> plot_confound_heatmap(t).layout.title.text
    'Cosine of each preference direction with each confound direction'
"""

from typing import TYPE_CHECKING

import pandas as pd

from icon2_lens.figures import PALETTE, plotly_go

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "plot_logit_lens",
    "plot_stereotype_gaps",
    "plot_stereotype_scores",
    "plot_confound_heatmap",
    "plot_shortcut_aucs",
    "plot_wording",
    "plot_dpo_shift",
]


def _rows(n: int, titles: list[str], height: int, shared_x: bool = True):
    from plotly.subplots import make_subplots

    return make_subplots(
        rows=n, cols=1, subplot_titles=titles, shared_xaxes=shared_x, vertical_spacing=0.08
    ), max(300, height * n)


def plot_logit_lens(
    table: pd.DataFrame, *, layers: list[int] | None = None, k: int = 8
) -> "go.Figure":
    """A table per criterion: at each layer, the top promoted and suppressed tokens."""
    go = plotly_go()
    crits = list(dict.fromkeys(table["criterion"]))
    layers = layers or sorted(table["layer"].unique())
    cells, header = [], ["criterion", "layer", f"promoted (top {k})", f"suppressed (top {k})"]
    for crit in crits:
        for layer in layers:
            part = table[(table["criterion"] == crit) & (table["layer"] == layer)]
            if part.empty:
                continue
            words = {
                side: " · ".join(
                    repr(t)[1:-1]
                    for t in part[part["side"] == side].sort_values("rank")["token"][:k]
                )
                for side in ("promoted", "suppressed")
            }
            cells.append([crit, int(layer), words["promoted"], words["suppressed"]])
    cols = list(zip(*cells)) if cells else [[] for _ in header]
    fig = go.Figure(
        go.Table(
            columnwidth=[90, 45, 380, 380],
            header={"values": header, "align": "left"},
            cells={"values": cols, "align": "left", "height": 22},
        )
    )
    fig.update_layout(
        title="Logit lens: tokens each direction promotes and suppresses (W_U · norm(u))",
        width=1000,
        height=min(3200, 140 + 34 * max(1, len(cells))),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig


def plot_stereotype_gaps(gaps: pd.DataFrame, *, steered: dict | None = None) -> "go.Figure":
    """Per criterion: the projection gap (in SDs) per layer and domain, with interval bands."""
    go = plotly_go()
    crits = list(dict.fromkeys(gaps["criterion"]))
    fig, height = _rows(len(crits), crits, 260)
    for i, crit in enumerate(crits, start=1):
        part = gaps[gaps["criterion"] == crit]
        for k, domain in enumerate(dict.fromkeys(part["domain"])):
            d = part[part["domain"] == domain].sort_values("layer")
            colour = PALETTE[k % len(PALETTE)]
            fig.add_trace(
                go.Scatter(
                    x=list(d["layer"]) + list(d["layer"])[::-1],
                    y=list(d["high_sd"]) + list(d["low_sd"])[::-1],
                    fill="toself",
                    fillcolor=colour,
                    opacity=0.18,
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=domain,
                ),
                row=i,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=d["layer"],
                    y=d["gap_sd"],
                    name=domain,
                    mode="lines+markers",
                    line={"color": colour},
                    legendgroup=domain,
                    showlegend=i == 1,
                ),
                row=i,
                col=1,
            )
        fig.add_hline(y=0, line={"color": "black", "width": 1}, row=i, col=1)
        if steered and crit in steered:
            lo, hi = min(steered[crit]), max(steered[crit])
            fig.add_vrect(
                x0=lo - 0.5,
                x1=hi + 0.5,
                fillcolor="green",
                opacity=0.08,
                line_width=0,
                row=i,
                col=1,
            )
    fig.update_layout(
        template="plotly_white",
        title="Projection gap stereotype − anti-stereotype (morality: moral − immoral)<br><sup>in SDs of the projections, 95 % bands; green: steered layers</sup>",
        height=height,
        width=900,
    )
    fig.update_xaxes(title_text="layer", row=len(crits), col=1)
    return fig


def plot_stereotype_scores(scores: pd.DataFrame) -> "go.Figure":
    """Grouped bars: stereotype score per domain and condition (base, +γ, −γ, trained), per criterion."""
    go = plotly_go()
    crits = list(dict.fromkeys(scores["criterion"]))
    fig, height = _rows(len(crits), crits, 260, shared_x=False)
    conditions = list(dict.fromkeys(scores["condition"]))
    for i, crit in enumerate(crits, start=1):
        part = scores[scores["criterion"] == crit]
        for k, cond in enumerate(conditions):
            d = part[part["condition"] == cond]
            fig.add_trace(
                go.Bar(
                    x=d["domain"],
                    y=d["value"],
                    name=cond,
                    marker_color=PALETTE[k % len(PALETTE)],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": (d["high"] - d["value"]).tolist(),
                        "arrayminus": (d["value"] - d["low"]).tolist(),
                    },
                    legendgroup=cond,
                    showlegend=i == 1,
                ),
                row=i,
                col=1,
            )
        fig.add_hline(y=0.5, line={"dash": "dot", "color": "black", "width": 1}, row=i, col=1)
    fig.update_layout(
        template="plotly_white",
        barmode="group",
        title="Stereotype score: share of pairs whose first sentence is more likely<br><sup>0.5 = no preference; 95 % intervals</sup>",
        height=height,
        width=900,
    )
    fig.update_yaxes(range=[0, 1])
    return fig


def plot_confound_heatmap(cosines: pd.DataFrame) -> "go.Figure":
    """Per criterion: cosine with each confound direction (rows) at each layer (columns)."""
    go = plotly_go()
    crits = list(dict.fromkeys(cosines["criterion"]))
    fig, height = _rows(len(crits), crits, 220)
    for i, crit in enumerate(crits, start=1):
        m = cosines[cosines["criterion"] == crit].pivot(
            index="confound", columns="layer", values="cosine"
        )
        m = m.reindex(list(dict.fromkeys(cosines["confound"])))
        fig.add_trace(
            go.Heatmap(
                z=m.values,
                x=list(m.columns),
                y=list(m.index),
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                showscale=i == 1,
                colorbar={"title": "cos"},
            ),
            row=i,
            col=1,
        )
    fig.update_layout(
        template="plotly_white",
        title="Cosine of each preference direction with each confound direction",
        height=height,
        width=900,
    )
    fig.update_xaxes(title_text="layer", row=len(crits), col=1)
    return fig


def plot_shortcut_aucs(report: dict, *, top: int = 12) -> "go.Figure":
    """Horizontal bars: cue strength max(AUC, 1 − AUC) of each surface feature and the bag of words."""
    go = plotly_go()
    feats = report["features"][:top]
    bow = report["bag_of_words"]["auc"]
    names = ["bag of words (CV)"] + [f["feature"] for f in feats]
    values = [max(bow, 1 - bow)] + [f["strength"] for f in feats]
    sides = ["either"] + [f["higher_in"] for f in feats]
    colours = [
        PALETTE[0] if s == "chosen" else PALETTE[3] if s == "rejected" else PALETTE[7]
        for s in sides
    ]
    fig = go.Figure(
        go.Bar(
            x=values[::-1],
            y=names[::-1],
            orientation="h",
            marker_color=colours[::-1],
            hovertext=[f"higher in {s}" for s in sides][::-1],
        )
    )
    fig.add_vline(x=report["threshold"], line={"dash": "dash", "color": "black"})
    fig.update_layout(
        template="plotly_white",
        title=f"Shortcut cues in {report['n_pairs']} pairs<br><sup>blue: higher in chosen, red: in rejected; dashed: warning threshold</sup>",
        height=120 + 26 * len(names),
        width=900,
        margin={"l": 220},
    )
    fig.update_xaxes(title_text="cue strength max(AUC, 1 − AUC)", range=[0.5, 1.0])
    return fig


def plot_wording(table: pd.DataFrame, *, threshold: float = 0.9) -> "go.Figure":
    """Per criterion: paired accuracy of its direction under each other wording, per layer."""
    go = plotly_go()
    crits = list(dict.fromkeys(table["criterion"]))
    fig, height = _rows(len(crits), crits, 240)
    for i, crit in enumerate(crits, start=1):
        part = table[table["criterion"] == crit]
        for k, w in enumerate(dict.fromkeys(part["wording"])):
            d = part[part["wording"] == w].sort_values("layer")
            fig.add_trace(
                go.Scatter(
                    x=d["layer"],
                    y=d["paired_acc"],
                    name=f"{crit}: {w}",
                    mode="lines+markers",
                    line={"color": PALETTE[k % len(PALETTE)]},
                ),
                row=i,
                col=1,
            )
        fig.add_hline(
            y=threshold, line={"dash": "dash", "color": "#d62728", "width": 1}, row=i, col=1
        )
        fig.add_hline(y=0.5, line={"dash": "dot", "color": "black", "width": 1}, row=i, col=1)
    fig.update_layout(
        template="plotly_white",
        title=f"Concept or wording? Paired accuracy under other wordings of the prompts<br><sup>held-out instructions; dashed: {threshold}</sup>",
        height=height,
        width=900,
    )
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(title_text="layer", row=len(crits), col=1)
    return fig


def plot_dpo_shift(table: pd.DataFrame) -> "go.Figure":
    """Cosine between each direction and the mean residual change trained − base, per layer."""
    go = plotly_go()
    fig = go.Figure()
    for k, crit in enumerate(dict.fromkeys(table["criterion"])):
        d = table[table["criterion"] == crit].sort_values("layer")
        fig.add_trace(
            go.Scatter(
                x=d["layer"],
                y=d["cosine"],
                name=crit,
                mode="lines+markers",
                line={"color": PALETTE[k % len(PALETTE)]},
            )
        )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    fig.update_layout(
        template="plotly_white",
        title="What did DPO move?<br><sup>cosine of the mean residual change (trained − base) with each direction</sup>",
        height=420,
        width=820,
    )
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="cosine", range=[-1, 1])
    return fig
