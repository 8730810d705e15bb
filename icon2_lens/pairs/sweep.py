"""γ and layer sweep: how strong, and where, to steer chosen and rejected responses.

For every control interval and every γ in the grid (plus γ = 0, the unsteered answer), each
sample instruction is answered once, steered along its criterion; all γ of one instruction run
in the same batch (per-row γ). Every response is judged by the unsteered model
(:mod:`icon2_lens.judge.reading`): its inherent score along the direction (read over the response's
tokens, ``read="mean"``), its per-token NLL (fluency), repetition and length, and whether it is
degenerate.

Selection rule, in the spirit of Icon²'s App. J with the model as its own judge (no reward model
is available offline):

1. **γ⁺** (per interval): among positive γ whose chosen answers stay fluent — degenerate rate ≤
   ``max_degenerate`` and mean NLL ≤ the unsteered NLL + ``nll_tolerance`` — the one with the
   highest mean inherent score ("best chosen quality").
2. **γ⁻**: the *mildest* negative γ that is still clearly worse than that γ⁺ — the rejected
   answers that stay closest to good (App. J keeps the strongest-reward rejected setting that
   still keeps P(chosen > rejected) > 0.9). "Clearly worse" is two conditions:

   * the *usable win rate* is ≥ ``min_win``: the share of instructions whose pair would be kept
     (neither answer degenerate, the two not identical) *and* whose chosen answer scores above
     the rejected one. A pair that :func:`~icon2_lens.pairs.icon2.generate_pairs` would drop counts as
     a loss: it costs two generations and yields nothing;
   * the kept pairs separate by at least ``min_effect`` standard deviations: effect size
     ``mean(gap) / sd(gap)`` of the per-instruction score gaps ≥ ``min_effect``. The paper's
     judge is an independent reward model; ours reads the very direction that was steered, so
     on the embedded model P(chosen > rejected) is ≈ 1 for every γ⁻ down to −0.01 and the win
     condition alone would always pick the weakest contrast in the grid.
3. **Interval**: among intervals with a (γ⁺, γ⁻) meeting the rule, the one with the highest
   usable win rate (the most kept pairs that are right), then the largest effect size
   (unit-free, so intervals of different residual norms compare fairly), then the lowest chosen
   NLL.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from icon2_lens._config import documented, option
from icon2_lens._types import LensModel
from icon2_lens.directions.set import DirectionSet
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.figures import PALETTE, plotly_go
from icon2_lens.judge.reading import score_responses
from icon2_lens.judge.rules import degeneracy, repetition_rate
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import Decoding, generate_rows
from icon2_lens.model.hooks import parse_layers

from .records import KeptInstruction

__all__ = [
    "SweepConfig",
    "SweepResult",
    "run_sweep",
    "summarize_sweep",
    "choose_setting",
    "plot_sweep",
]

log = logging.getLogger(__name__)


@documented
@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """What the γ / layer sweep tries and the rule that picks a setting (see the module docstring)."""

    gammas: tuple[float, ...] = option(
        (-0.06, -0.04, -0.03, -0.02, -0.01, 0.01, 0.02, 0.03, 0.04),
        help="γ grid (γ = 0, the unsteered answer, is always added)",
    )
    intervals: tuple[str, ...] = option(
        ("10-19", "13-22", "16-25"),
        sep=";",
        help="layer intervals to compare (the defaults suit SmolLM2's 30 layers)",
    )
    n_instructions: int = option(40, flag="--n", help="instructions sampled (seeded) from the pool")
    seed: int = option(0, help="seed of the instruction sample")
    read: Literal["mean", "last"] = option(
        "mean", help="judge reading of a response: mean over its tokens or its last token"
    )
    unit: Literal["relative", "absolute"] = option("relative", help="units of γ (see pairs)")
    positions: Literal["all", "generated"] = option("all", help="steered positions (see pairs)")
    max_new_tokens: int = option(96, help="answer budget in tokens")
    batch_rows: int = option(32, help="rows per generation batch")
    min_win: float = option(0.9, help="γ⁻ must give a usable win rate of at least this")
    min_effect: float = option(
        2.0, help="γ⁻ must separate its pairs by this many sd of the score gaps"
    )
    max_degenerate: float = option(0.05, help="γ⁺ must keep the degenerate rate at or below this")
    nll_tolerance: float = option(
        0.25, help="γ⁺ may raise the chosen answers' NLL over the unsteered one by this"
    )

    def __post_init__(self) -> None:
        if not self.gammas or not all(np.isfinite(g) for g in self.gammas):
            raise ValueError(f"the γ grid must be non-empty and finite, got {self.gammas}")
        if not self.intervals:
            raise ValueError("name at least one layer interval")
        if self.n_instructions < 1 or self.batch_rows < 1 or self.max_new_tokens < 1:
            raise ValueError("n_instructions, batch_rows and max_new_tokens must be at least 1")

    def rule(self) -> dict[str, Any]:
        """The selection rule's parameters, as recorded in ``sweep.json``."""
        return {
            "min_win": self.min_win,
            "min_effect": self.min_effect,
            "max_degenerate": self.max_degenerate,
            "nll_tolerance": self.nll_tolerance,
            "read": self.read,
            "positions": self.positions,
            "unit": self.unit,
        }


@dataclass
class SweepResult:
    """Per-response measurements, per-γ summaries, pairwise win rates and the chosen setting.

    Attributes:
        responses: One row per (interval, γ, instruction).
        by_gamma: Mean score/NLL/repetition/length and degenerate rate per (interval, γ).
        pairs: Win rate P(score(γ⁺) > score(γ⁻)) per (interval, γ⁺, γ⁻).
        choice: The setting chosen by :func:`choose_setting` (see the module docstring).
        rule: The rule's parameters.
    """

    responses: pd.DataFrame
    by_gamma: pd.DataFrame
    pairs: pd.DataFrame
    choice: dict[str, Any] = field(default_factory=dict)
    rule: dict[str, float] = field(default_factory=dict)


def run_sweep(
    model: LensModel,
    items: Sequence[KeptInstruction],
    direction_sets: Mapping[str, DirectionSet],
    config: SweepConfig | None = None,
    *,
    intervals: Mapping[str, Sequence[int]] | None = None,
    progress: bool = True,
) -> SweepResult:
    """Sweep γ and control intervals on ``items`` (instructions with their criterion).

    Args:
        model: The bridge.
        items: Sample instructions with their steering criterion.
        direction_sets: Criterion -> direction set.
        config: The grid, the judge's reading and the rule (:class:`SweepConfig`).
        intervals: Label -> layers (e.g. ``{"10-19": range(10, 20)}``), instead of
            ``config.intervals``.
        progress: Show progress bars.
    """
    config = config or SweepConfig()
    if not items:
        raise ValueError("no instructions to sweep on")
    decoding = Decoding(max_new_tokens=config.max_new_tokens)
    unit, positions, read, batch_rows = (
        config.unit,
        config.positions,
        config.read,
        config.batch_rows,
    )
    n_layers = model.cfg.n_layers
    if not intervals:
        intervals = {spec: parse_layers(spec, n_layers) for spec in config.intervals}
    grid = sorted({0.0, *[float(g) for g in config.gammas]})
    for g in grid:
        if not np.isfinite(g):
            raise ValueError(f"non-finite γ in the grid: {g}")
    for label, layers in intervals.items():
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad or not layers:
            raise ValueError(
                f"interval {label!r} has layers {bad or list(layers)} outside the model (0..{n_layers - 1})"
            )
    tok = model.tokenizer
    rows_all = encode_prompts(
        tok,
        [render_chat(tok, it.instruction) for it in items],
        max_len=getattr(model.cfg, "n_ctx", None),
    )
    jobs = [(i, g) for i in range(len(items)) for g in grid]
    records = []
    for label, layers in intervals.items():
        layers = list(layers)
        texts: dict[tuple[int, float], Any] = {}
        chunks = [jobs[s : s + batch_rows] for s in range(0, len(jobs), batch_rows)]
        for chunk in tqdm(chunks, desc=f"sweep {label}", disable=not progress, unit="batch"):
            specs = []
            for name in sorted({items[i].criterion for i, _ in chunk}):
                gam = [g if items[i].criterion == name else 0.0 for i, g in chunk]
                specs.append(
                    SteeringSpec(
                        directions=direction_sets[name],
                        gamma=gam,
                        layers=layers,
                        unit=unit,
                        positions=positions,
                        prompt_len=1,
                    )
                )
            seeds = [items[i].index * 1000 + grid.index(g) for i, g in chunk]
            gens = generate_rows(
                model, [rows_all[i] for i, _ in chunk], decoding, steering=specs, row_seeds=seeds
            )
            texts.update({job: gen for job, gen in zip(chunk, gens)})
        keys = list(texts)
        scored = score_responses(
            model,
            [items[i].instruction for i, _ in keys],
            [texts[k].text for k in keys],
            [direction_sets[items[i].criterion] for i, _ in keys],
            layers=[layers] * len(keys),
            read=read,
            progress=progress,
        )
        for n, (i, g) in enumerate(keys):
            gen = texts[(i, g)]
            records.append(
                {
                    "interval": label,
                    "gamma": g,
                    "index": items[i].index,
                    "criterion": items[i].criterion,
                    "score": float(scored["projection"][n]),
                    "nll": float(scored["nll"][n]),
                    "repetition": repetition_rate(gen.token_ids),
                    "length": len(gen.token_ids),
                    "finished": gen.finished,
                    "degenerate": degeneracy(gen.text, gen.token_ids) is not None,
                    "text": gen.text,
                }
            )
    responses = pd.DataFrame(records)
    result = summarize_sweep(responses)
    result.rule = config.rule()
    result.choice = choose_setting(result, config)
    return result


def summarize_sweep(responses: pd.DataFrame) -> SweepResult:
    """Per-γ means and, per (γ⁺, γ⁻), win rates and the effect size of the score gaps.

    ``pairs`` columns: ``win`` (P(score(γ⁺) > score(γ⁻)) over all instructions), ``usable``
    (share of pairs that would be kept: neither answer degenerate, texts differ), ``win_usable``
    (kept *and* chosen above rejected) and ``effect`` (mean / sd of the gaps of kept pairs).
    """
    by_gamma = (
        responses.groupby(["interval", "gamma"])
        .agg(
            score=("score", "mean"),
            nll=("nll", "mean"),
            repetition=("repetition", "mean"),
            length=("length", "mean"),
            degenerate=("degenerate", "mean"),
            finished=("finished", "mean"),
            n=("score", "size"),
        )
        .reset_index()
    )
    rows = []
    for label, sub in responses.groupby("interval"):
        score = sub.pivot(index="index", columns="gamma", values="score")
        bad = sub.pivot(index="index", columns="gamma", values="degenerate").astype(bool)
        text = sub.pivot(index="index", columns="gamma", values="text") if "text" in sub else None
        for gp in [g for g in score.columns if g > 0]:
            for gn in [g for g in score.columns if g < 0]:
                usable = ~bad[gp] & ~bad[gn]
                if text is not None:
                    usable &= text[gp] != text[gn]
                wins = score[gp] > score[gn]
                gap = (score[gp] - score[gn])[usable]
                rows.append(
                    {
                        "interval": label,
                        "gamma_pos": gp,
                        "gamma_neg": gn,
                        "win": float(wins.mean()),
                        "usable": float(usable.mean()),
                        "win_usable": float((wins & usable).mean()),
                        "effect": _effect(gap),
                    }
                )
    return SweepResult(responses, by_gamma, pd.DataFrame(rows))


def _effect(gap: pd.Series) -> float:
    """``mean / sd`` of the gaps (``inf`` for identical positive gaps, NaN for fewer than two)."""
    if len(gap) < 2:
        return float("nan")
    mean, sd = float(gap.mean()), float(gap.std())
    if sd == 0:
        return float("inf") if mean > 0 else float("-inf") if mean < 0 else float("nan")
    return mean / sd


def choose_setting(
    result: SweepResult,
    config: SweepConfig | None = None,
    *,
    min_win: float | None = None,
    min_effect: float | None = None,
    max_degenerate: float | None = None,
    nll_tolerance: float | None = None,
) -> dict[str, Any]:
    """Apply the selection rule of the module docstring; ``{}`` with a reason if nothing qualifies.

    The rule's parameters come from ``config`` (default :class:`SweepConfig`); keywords override them.
    """
    config = config or SweepConfig()
    min_win = config.min_win if min_win is None else min_win
    min_effect = config.min_effect if min_effect is None else min_effect
    max_degenerate = config.max_degenerate if max_degenerate is None else max_degenerate
    nll_tolerance = config.nll_tolerance if nll_tolerance is None else nll_tolerance
    options = []
    for label, sub in result.by_gamma.groupby("interval"):
        base = sub[sub["gamma"] == 0.0]
        base_nll = float(base["nll"].iloc[0]) if len(base) else float("inf")
        fluent = sub[
            (sub["gamma"] > 0)
            & (sub["degenerate"] <= max_degenerate)
            & (sub["nll"] <= base_nll + nll_tolerance)
        ]
        if fluent.empty:
            continue
        best = fluent.sort_values(["score", "gamma"], ascending=[False, True]).iloc[0]
        gp = float(best["gamma"])
        pairs = result.pairs[
            (result.pairs["interval"] == label)
            & (result.pairs["gamma_pos"] == gp)
            & (result.pairs["win_usable"] >= min_win)
            & (result.pairs["effect"] >= min_effect)
        ]
        option = {
            "interval": label,
            "gamma_pos": gp,
            "gamma_neg": None,
            "win": None,
            "chosen_nll": float(best["nll"]),
            "base_nll": base_nll,
            "chosen_score": float(best["score"]),
            "chosen_degenerate": float(best["degenerate"]),
        }
        if not pairs.empty:
            mild = pairs.sort_values("gamma_neg", ascending=False).iloc[0]
            neg = sub[sub["gamma"] == mild["gamma_neg"]].iloc[0]
            option.update(
                gamma_neg=float(mild["gamma_neg"]),
                win=float(mild["win_usable"]),
                win_all=float(mild["win"]),
                usable=float(mild["usable"]),
                effect=float(mild["effect"]),
                rejected_nll=float(neg["nll"]),
                rejected_degenerate=float(neg["degenerate"]),
            )
        options.append(option)
    complete = [o for o in options if o["gamma_neg"] is not None]
    if not complete:
        return {
            "reason": "no setting met the rule; widen the grid or relax min_win / nll_tolerance",
            "candidates": options,
        }
    complete.sort(key=lambda o: (-o["win"], -o["effect"], o["chosen_nll"]))
    return complete[0]


def plot_sweep(result: SweepResult, *, template: str = "plotly_white"):
    """Four panels against γ, one line per interval: inherent score, NLL, repetition, degenerate rate."""
    from plotly.subplots import make_subplots

    go = plotly_go()

    panels = [
        ("score", "inherent score"),
        ("nll", "NLL / token (unsteered model)"),
        ("repetition", "repeated 4-grams"),
        ("degenerate", "degenerate rate"),
    ]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels])
    for k, (label, sub) in enumerate(result.by_gamma.groupby("interval")):
        for c, (col, _) in enumerate(panels, start=1):
            fig.add_trace(
                go.Scatter(
                    x=sub["gamma"],
                    y=sub[col],
                    mode="lines+markers",
                    name=f"layers {label}",
                    legendgroup=label,
                    showlegend=c == 1,
                    line={"color": PALETTE[k % len(PALETTE)]},
                ),
                row=1,
                col=c,
            )
    fig.update_xaxes(title_text="γ (relative)")
    title = "γ / layer sweep"
    if result.choice.get("gamma_neg") is not None:
        ch = result.choice
        title += f" — chosen: layers {ch['interval']}, γ⁺={ch['gamma_pos']:g}, γ⁻={ch['gamma_neg']:g}, win {ch['win']:.2f}"
    fig.update_layout(template=template, height=380, width=1300, title=title)
    return fig
