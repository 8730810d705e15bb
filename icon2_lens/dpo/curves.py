"""DPO reward curves and the one saturation rule, for a single run and across pair sources.

The rule (:class:`SaturationRule`): the reward accuracy, averaged over ``window`` consecutive
logged steps, reaching ``threshold``. A run is *flagged* when that happens within the first
``early_fraction`` of its logged steps (the reward-hacking signature of Icon² App. I); the report
of an experiment shows, per source, the first step at which it happens at all. Both use the same
rule, and both record its parameters.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from icon2_lens._config import documented, option
from icon2_lens._files import read_json
from icon2_lens.figures import PALETTE, plotly_go

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "SaturationRule",
    "train_rows",
    "first_saturated",
    "check_reward_saturation",
    "plot_reward_curves",
    "reward_curves",
    "saturation_steps",
    "plot_reward_accuracy",
]


@documented
@dataclass(frozen=True, kw_only=True)
class SaturationRule:
    """When DPO's reward accuracy counts as saturated (see the module docstring).

    Example:
        >>> SaturationRule().window
        3
    """

    threshold: float = option(0.97, help="reward accuracy counted as saturated")
    window: int = option(
        3,
        help="logged steps averaged before comparing with the threshold (per-step "
        "accuracies on small batches are noisy)",
    )
    early_fraction: float = option(
        0.2, help="leading fraction of the logged steps in which saturation flags a run"
    )

    def __post_init__(self) -> None:
        if not (0 < self.threshold <= 1 and 0 < self.early_fraction <= 1 and self.window >= 1):
            raise ValueError("need 0 < threshold <= 1, 0 < early_fraction <= 1 and window >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_rows(log_history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Training log entries (evaluation entries carry ``eval_`` keys, the summary none)."""
    return [row for row in log_history if "rewards/accuracies" in row]


def first_saturated(
    accuracies: Sequence[float], rule: SaturationRule | None = None, *, within: int | None = None
) -> tuple[int, float] | None:
    """``(index, window mean)`` of the first logged step whose window mean reaches the threshold.

    Args:
        accuracies: Reward accuracy per logged step.
        rule: The rule (default :class:`SaturationRule`).
        within: Only look at the first ``within`` logged steps.

    Example:
        >>> first_saturated([0.0, 0.5, 1.0, 1.0, 1.0, 1.0])
        (4, 1.0)
    """
    rule = rule or SaturationRule()
    last = len(accuracies) if within is None else min(within, len(accuracies))
    for end in range(rule.window, last + 1):
        mean = sum(float(a) for a in accuracies[end - rule.window : end]) / rule.window
        if mean >= rule.threshold:
            return end - 1, mean
    return None


def check_reward_saturation(
    log_history: Sequence[Mapping[str, Any]], rule: SaturationRule | None = None, **overrides: Any
) -> str | None:
    """Warn when the reward accuracy saturates early: the reward-hacking signature.

    When chosen and rejected differ in surface features (length, tone, refusals), the policy
    learns to tell them apart almost at once: the Icon² paper (App. I) saw ``rewards/accuracies``
    ≈ 0.99 early in training while the model barely improved. This flags a run whose accuracy,
    averaged over ``window`` consecutive logged steps, reaches ``threshold`` within the first
    ``early_fraction`` of the logged steps. Runs with fewer than ``window / early_fraction``
    logged steps are too short to judge and are never flagged. The first step always logs
    accuracy 0 (the policy still equals the reference, so all rewards tie).

    Args:
        log_history: ``trainer.state.log_history`` (entries without ``rewards/accuracies`` are
            ignored).
        rule: The rule (default :class:`SaturationRule`).
        **overrides: Fields of the rule to change (``threshold``, ``window``, ``early_fraction``).

    Returns:
        A warning message (the caller logs it), or ``None``.

    Example:
        >>> fast = [{"step": s, "rewards/accuracies": 1.0 if s > 1 else 0.0} for s in range(1, 51)]
        >>> check_reward_saturation(fast) is not None
        True
        >>> slow = [{"step": s, "rewards/accuracies": s / 50} for s in range(1, 51)]
        >>> check_reward_saturation(slow) is None
        True
    """
    rule = SaturationRule(**{**(rule or SaturationRule()).to_dict(), **overrides})
    rows = train_rows(log_history)
    hit = first_saturated(
        [row["rewards/accuracies"] for row in rows],
        rule,
        within=math.ceil(rule.early_fraction * len(rows)),
    )
    if hit is None:
        return None
    at, mean = hit
    step, last = rows[at].get("step", at + 1), rows[-1].get("step", len(rows))
    margin = rows[at].get("rewards/margins", math.nan)
    return (
        f"reward accuracy saturated early: mean {mean:.2f} over {rule.window} logged steps by step "
        f"{step} of {last} (first {rule.early_fraction:.0%} of training; margin {margin:.3f}). This is "
        "the reward-hacking signature of pairs that differ by surface cues (Icon² App. I: "
        "accuracy ≈ 0.99 early while the model barely improves). Inspect the pairs (length, "
        "tone, refusals), filter them by consistency, or raise beta / lower the learning rate."
    )


def plot_reward_curves(
    log_history: Sequence[Mapping[str, Any]], *, template: str = "plotly_white"
) -> "go.Figure":
    """Reward accuracy and reward margin against the optimizer step.

    Args:
        log_history: ``trainer.state.log_history`` (or ``DPOResult.log_history``).
        template: Plotly template.

    Returns:
        A figure with two stacked panels: ``rewards/accuracies`` (fraction of pairs whose chosen
        reward beats the rejected one; dotted line at chance) and ``rewards/margins``.

    Raises:
        ValueError: If no entry has ``rewards/accuracies``.

    Example:
        >>> fig = plot_reward_curves([{"step": 1, "rewards/accuracies": 0.5, "rewards/margins": 0.1}])
        >>> [t.name for t in fig.data]
        ['rewards/accuracies', 'rewards/margins']
    """
    from plotly.subplots import make_subplots

    go = plotly_go()

    rows = train_rows(log_history)
    if not rows:
        raise ValueError(
            "the log history has no 'rewards/accuracies' entries (no DPO training step was logged)"
        )
    steps = [row.get("step", i + 1) for i, row in enumerate(rows)]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=(
            "reward accuracy (chosen reward > rejected reward)",
            "reward margin (chosen − rejected reward)",
        ),
    )
    for r, key in enumerate(("rewards/accuracies", "rewards/margins"), start=1):
        fig.add_trace(
            go.Scatter(x=steps, y=[row.get(key) for row in rows], name=key, mode="lines+markers"),
            row=r,
            col=1,
        )
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="margin", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(template=template, title="DPO reward curves", width=800, height=600)
    return fig


def reward_curves(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Per pair source, TRL's logged ``rewards/accuracies`` and ``rewards/margins`` per step.

    ``root`` is an experiment directory (``root/dpo/<source>/dpo_log.json``).
    """
    root = Path(root)
    out = {}
    for log_path in sorted(root.glob("dpo/*/dpo_log.json")):
        hist = read_json(log_path)["log_history"]
        out[log_path.parent.name] = [
            {
                "step": h.get("step"),
                "accuracy": h["rewards/accuracies"],
                "margin": h.get("rewards/margins"),
            }
            for h in train_rows(hist)
        ]
    return out


def saturation_steps(
    curves: Mapping[str, list[dict[str, Any]]], rule: SaturationRule | None = None
) -> pd.DataFrame:
    """Per source: the first step at which the rule's window mean reaches its threshold (as a step and
    a fraction of training), whether that is early enough to flag the run, and the final margin."""
    rule = rule or SaturationRule()
    rows = []
    for source, pts in curves.items():
        acc = [p["accuracy"] for p in pts]
        hit = first_saturated(acc, rule)
        first = pts[hit[0]]["step"] if hit else None
        last = pts[-1]["step"] if pts else None
        flagged = bool(hit) and hit[0] < math.ceil(rule.early_fraction * len(pts))
        rows.append(
            {
                "source": source,
                "steps": last,
                f"first step ≥ {rule.threshold} (mean of {rule.window})": first,
                "fraction of training": (first / last) if first and last else None,
                "saturated early": flagged,
                "mean accuracy": sum(acc) / len(acc) if acc else None,
                "final margin": pts[-1]["margin"] if pts else None,
            }
        )
    return pd.DataFrame(rows)


def plot_reward_accuracy(
    curves: Mapping[str, list[dict[str, Any]]], *, template: str = "plotly_white"
) -> "go.Figure":
    """Reward accuracy and margin per step, one colour per pair source in both panels (Icon² App. I).

    Example:
        >>> fig = plot_reward_accuracy({"a": [{"step": 1, "accuracy": 0.5, "margin": 0.1}],
        ...                             "b": [{"step": 1, "accuracy": 0.6, "margin": 0.2}]})
        >>> [t.line.color for t in fig.data] == [PALETTE[0], PALETTE[0], PALETTE[1], PALETTE[1]]
        True
    """
    from plotly.subplots import make_subplots

    go = plotly_go()
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=(
            "DPO reward accuracy (chosen reward > rejected reward)",
            "DPO reward margin (chosen − rejected reward)",
        ),
    )
    for k, (source, pts) in enumerate(curves.items()):
        steps = [p["step"] for p in pts]
        style = {"color": PALETTE[k % len(PALETTE)], "width": 2}
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[p["accuracy"] for p in pts],
                name=source,
                legendgroup=source,
                mode="lines+markers",
                line=style,
                marker={"color": style["color"], "size": 6},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[p["margin"] for p in pts],
                name=source,
                legendgroup=source,
                showlegend=False,
                mode="lines+markers",
                line=style,
                marker={"color": style["color"], "size": 6},
            ),
            row=2,
            col=1,
        )
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="margin", row=2, col=1)
    fig.update_xaxes(title_text="optimizer step", row=2, col=1)
    fig.update_layout(
        template=template,
        width=900,
        height=700,
        title="DPO reward curves per pair source",
        legend={"orientation": "h", "y": -0.12, "x": 0.5, "xanchor": "center"},
        margin={"t": 90, "b": 110},
    )
    return fig
