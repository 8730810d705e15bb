"""The consistency filter's figure: score distributions per criterion, kept vs the rest."""

from typing import TYPE_CHECKING, Any

from icon2_lens.figures import plotly_go

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["plot_consistency"]


def plot_consistency(
    scores: Any, selection: Any, *, bins: int = 40, template: str = "plotly_white"
) -> "go.Figure":
    """Score distribution per criterion: instructions kept for that criterion vs all the others.

    Args:
        scores: A :class:`~icon2_lens.consistency.scores.ConsistencyScores`.
        selection: The :class:`~icon2_lens.consistency.scores.Selection` made from it.
    """
    from plotly.subplots import make_subplots

    go = plotly_go()
    crit = scores.best_criterion
    kept = set(selection.kept)
    fig = make_subplots(
        rows=1, cols=len(scores.criteria), subplot_titles=list(scores.criteria), shared_yaxes=True
    )
    for j, name in enumerate(scores.criteria):
        col = scores.scores[:, j].tolist()
        groups = {
            f"kept, steered along {name}": [
                v for i, v in enumerate(col) if i in kept and crit[i] == name
            ],
            "not kept for it": [
                v for i, v in enumerate(col) if not (i in kept and crit[i] == name)
            ],
        }
        for (label, values), color in zip(groups.items(), ("#2ca02c", "#7f7f7f")):
            fig.add_trace(
                go.Histogram(
                    x=values,
                    nbinsx=bins,
                    name=label,
                    marker_color=color,
                    opacity=0.7,
                    legendgroup=label,
                    showlegend=j == 0,
                ),
                row=1,
                col=j + 1,
            )
        fig.update_xaxes(
            title_text=f"score ({scores.settings.get('scoring', 'dot')})", row=1, col=j + 1
        )
    fig.update_layout(
        barmode="overlay",
        template=template,
        height=380,
        width=max(500, 320 * len(scores.criteria)),
        title=f"Inherent consistency: {len(kept)} of {len(crit)} kept ({selection.rule} {selection.value:g})",
    )
    fig.update_yaxes(title_text="instructions", row=1, col=1)
    return fig
