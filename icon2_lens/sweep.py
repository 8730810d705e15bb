"""γ and layer sweep: how strong, and where, to steer chosen and rejected responses.

For every control interval and every γ in the grid (plus γ = 0, the unsteered answer), each
sample instruction is answered once, steered along its criterion; all γ of one instruction run
in the same batch (per-row γ). Every response is judged by the unsteered model
(:mod:`icon2_lens.score`): its inherent score along the direction (read over the response's
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
     the rejected one. A pair that :func:`~icon2_lens.pairs.generate_pairs` would drop counts as
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
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ._types import LensModel
from .chat import encode_prompts, render_chat
from .directions import DirectionSet
from .generate import Decoding, generate_rows
from .pairs import KeptInstruction
from .score import degeneracy, repetition_rate, score_responses
from .steer import SteeringSpec

__all__ = ["SweepResult", "run_sweep", "choose_setting", "plot_sweep"]

log = logging.getLogger(__name__)


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
    *,
    gammas: Sequence[float] = (-0.06, -0.04, -0.03, -0.02, -0.01, 0.01, 0.02, 0.03, 0.04),
    intervals: Mapping[str, Sequence[int]] | None = None,
    unit: str = "relative",
    positions: str = "all",
    decoding: Decoding | None = None,
    read: str = "mean",
    batch_rows: int = 32,
    min_win: float = 0.9,
    min_effect: float = 2.0,
    max_degenerate: float = 0.05,
    nll_tolerance: float = 0.25,
    progress: bool = True,
) -> SweepResult:
    """Sweep γ and control intervals on ``items`` (instructions with their criterion).

    Args:
        model: The bridge.
        items: Sample instructions with their steering criterion.
        direction_sets: Criterion -> direction set.
        gammas: γ grid (γ = 0 is always added as the reference).
        intervals: Label -> layers (e.g. ``{"10-19": range(10, 20)}``); default: the middle third.
        unit: γ units (``relative`` or ``absolute``).
        positions: Steered positions (``all`` or ``generated``).
        decoding: Decoding settings (greedy, 96 new tokens by default).
        read: How responses are read by the judge (see :func:`~icon2_lens.score.score_responses`).
        batch_rows: Rows per generation batch.
        min_win, min_effect, max_degenerate, nll_tolerance: The selection rule's parameters.
        progress: Show progress bars.
    """
    if not items:
        raise ValueError("no instructions to sweep on")
    decoding = decoding or Decoding(max_new_tokens=96)
    n_layers = model.cfg.n_layers
    if not intervals:
        lo = n_layers // 3
        intervals = {f"{lo}-{2 * n_layers // 3 - 1}": list(range(lo, 2 * n_layers // 3))}
    grid = sorted({0.0, *[float(g) for g in gammas]})
    for g in grid:
        if not np.isfinite(g):
            raise ValueError(f"non-finite γ in the grid: {g}")
    for label, layers in intervals.items():
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad or not layers:
            raise ValueError(f"interval {label!r} has layers {bad or list(layers)} outside the model (0..{n_layers - 1})")
    tok = model.tokenizer
    rows_all = encode_prompts(tok, [render_chat(tok, it.instruction) for it in items],
                              max_len=getattr(model.cfg, "n_ctx", None))
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
                specs.append(SteeringSpec(directions=direction_sets[name], gamma=gam, layers=layers, unit=unit,
                                          positions=positions, prompt_len=1))
            seeds = [items[i].index * 1000 + grid.index(g) for i, g in chunk]
            gens = generate_rows(model, [rows_all[i] for i, _ in chunk], decoding, steering=specs, row_seeds=seeds)
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
            records.append({
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
            })
    responses = pd.DataFrame(records)
    result = summarize_sweep(responses)
    result.rule = {"min_win": min_win, "min_effect": min_effect, "max_degenerate": max_degenerate,
                   "nll_tolerance": nll_tolerance, "read": read, "positions": positions, "unit": unit}
    result.choice = choose_setting(result, min_win=min_win, min_effect=min_effect, max_degenerate=max_degenerate,
                                   nll_tolerance=nll_tolerance)
    return result


def summarize_sweep(responses: pd.DataFrame) -> SweepResult:
    """Per-γ means and, per (γ⁺, γ⁻), win rates and the effect size of the score gaps.

    ``pairs`` columns: ``win`` (P(score(γ⁺) > score(γ⁻)) over all instructions), ``usable``
    (share of pairs that would be kept: neither answer degenerate, texts differ), ``win_usable``
    (kept *and* chosen above rejected) and ``effect`` (mean / sd of the gaps of kept pairs).
    """
    by_gamma = (
        responses.groupby(["interval", "gamma"])
        .agg(score=("score", "mean"), nll=("nll", "mean"), repetition=("repetition", "mean"),
             length=("length", "mean"), degenerate=("degenerate", "mean"), finished=("finished", "mean"),
             n=("score", "size"))
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
                rows.append({"interval": label, "gamma_pos": gp, "gamma_neg": gn,
                             "win": float(wins.mean()), "usable": float(usable.mean()),
                             "win_usable": float((wins & usable).mean()), "effect": _effect(gap)})
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
    *,
    min_win: float = 0.9,
    min_effect: float = 2.0,
    max_degenerate: float = 0.05,
    nll_tolerance: float = 0.25,
) -> dict[str, Any]:
    """Apply the selection rule of the module docstring; ``{}`` with a reason if nothing qualifies."""
    options = []
    for label, sub in result.by_gamma.groupby("interval"):
        base = sub[sub["gamma"] == 0.0]
        base_nll = float(base["nll"].iloc[0]) if len(base) else float("inf")
        fluent = sub[(sub["gamma"] > 0) & (sub["degenerate"] <= max_degenerate)
                     & (sub["nll"] <= base_nll + nll_tolerance)]
        if fluent.empty:
            continue
        best = fluent.sort_values(["score", "gamma"], ascending=[False, True]).iloc[0]
        gp = float(best["gamma"])
        pairs = result.pairs[(result.pairs["interval"] == label) & (result.pairs["gamma_pos"] == gp)
                             & (result.pairs["win_usable"] >= min_win) & (result.pairs["effect"] >= min_effect)]
        option = {"interval": label, "gamma_pos": gp, "gamma_neg": None, "win": None,
                  "chosen_nll": float(best["nll"]), "base_nll": base_nll,
                  "chosen_score": float(best["score"]), "chosen_degenerate": float(best["degenerate"])}
        if not pairs.empty:
            mild = pairs.sort_values("gamma_neg", ascending=False).iloc[0]
            neg = sub[sub["gamma"] == mild["gamma_neg"]].iloc[0]
            option.update(gamma_neg=float(mild["gamma_neg"]), win=float(mild["win_usable"]),
                          win_all=float(mild["win"]), usable=float(mild["usable"]), effect=float(mild["effect"]),
                          rejected_nll=float(neg["nll"]), rejected_degenerate=float(neg["degenerate"]))
        options.append(option)
    complete = [o for o in options if o["gamma_neg"] is not None]
    if not complete:
        return {"reason": "no setting met the rule; widen the grid or relax min_win / nll_tolerance",
                "candidates": options}
    complete.sort(key=lambda o: (-o["win"], -o["effect"], o["chosen_nll"]))
    return complete[0]


def plot_sweep(result: SweepResult, *, template: str = "plotly_white"):
    """Four panels against γ, one line per interval: inherent score, NLL, repetition, degenerate rate."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("score", "inherent score"), ("nll", "NLL / token (unsteered model)"),
              ("repetition", "repeated 4-grams"), ("degenerate", "degenerate rate")]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels])
    for k, (label, sub) in enumerate(result.by_gamma.groupby("interval")):
        for c, (col, _) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=sub["gamma"], y=sub[col], mode="lines+markers", name=f"layers {label}",
                                     legendgroup=label, showlegend=c == 1,
                                     line={"color": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"][k % 5]}),
                          row=1, col=c)
    fig.update_xaxes(title_text="γ (relative)")
    title = "γ / layer sweep"
    if result.choice.get("gamma_neg") is not None:
        ch = result.choice
        title += f" — chosen: layers {ch['interval']}, γ⁺={ch['gamma_pos']:g}, γ⁻={ch['gamma_neg']:g}, win {ch['win']:.2f}"
    fig.update_layout(template=template, height=380, width=1300, title=title)
    return fig
