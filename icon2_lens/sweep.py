"""γ and layer sweep: how strong, and where, to steer chosen and rejected responses.

For every control interval and every γ in the grid (plus γ = 0, the unsteered answer), each
sample instruction is answered once, steered along its criterion; all γ of one instruction run
in the same batch (per-row γ). Every response is judged by the unsteered model
(:mod:`icon2_lens.score`): its inherent score along the direction, its per-token NLL (fluency),
repetition and length, and whether it is degenerate.

Selection rule, in the spirit of Icon²'s App. J with the model as its own judge (no reward model
is available offline):

1. **γ⁺** (per interval): among positive γ whose chosen answers stay fluent — degenerate rate ≤
   ``max_degenerate`` and mean NLL ≤ the unsteered NLL + ``nll_tolerance`` — the one with the
   highest mean inherent score ("best chosen quality").
2. **γ⁻**: among negative γ with P(score(chosen) > score(rejected)) ≥ ``min_win`` against that
   γ⁺, the *mildest* one — the rejected answers that stay closest to good while still clearly
   worse along the direction (App. J keeps the strongest-reward rejected setting that still
   keeps P(chosen > rejected) > 0.9).
3. **Interval**: the one whose chosen (γ⁺, γ⁻) pair has the highest win rate, then lowest NLL.
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
    gammas: Sequence[float] = (-0.08, -0.06, -0.04, -0.03, -0.02, 0.02, 0.03, 0.04, 0.06),
    intervals: Mapping[str, Sequence[int]] | None = None,
    unit: str = "relative",
    positions: str = "all",
    decoding: Decoding | None = None,
    batch_rows: int = 32,
    min_win: float = 0.9,
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
        batch_rows: Rows per generation batch.
        min_win, max_degenerate, nll_tolerance: The selection rule's parameters.
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
    result.rule = {"min_win": min_win, "max_degenerate": max_degenerate, "nll_tolerance": nll_tolerance}
    result.choice = choose_setting(result, min_win=min_win, max_degenerate=max_degenerate,
                                   nll_tolerance=nll_tolerance)
    return result


def summarize_sweep(responses: pd.DataFrame) -> SweepResult:
    """Per-γ means and pairwise win rates from per-response rows."""
    by_gamma = (
        responses.groupby(["interval", "gamma"])
        .agg(score=("score", "mean"), nll=("nll", "mean"), repetition=("repetition", "mean"),
             length=("length", "mean"), degenerate=("degenerate", "mean"), finished=("finished", "mean"),
             n=("score", "size"))
        .reset_index()
    )
    rows = []
    for label, sub in responses.groupby("interval"):
        table = sub.pivot(index="index", columns="gamma", values="score")
        for gp in [g for g in table.columns if g > 0]:
            for gn in [g for g in table.columns if g < 0]:
                rows.append({"interval": label, "gamma_pos": gp, "gamma_neg": gn,
                             "win": float((table[gp] > table[gn]).mean())})
    return SweepResult(responses, by_gamma, pd.DataFrame(rows))


def choose_setting(
    result: SweepResult, *, min_win: float = 0.9, max_degenerate: float = 0.05, nll_tolerance: float = 0.25
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
                             & (result.pairs["win"] >= min_win)]
        if pairs.empty:
            options.append({"interval": label, "gamma_pos": gp, "gamma_neg": None, "win": None,
                            "chosen_nll": float(best["nll"]), "base_nll": base_nll})
            continue
        mild = pairs.sort_values("gamma_neg", ascending=False).iloc[0]
        options.append({"interval": label, "gamma_pos": gp, "gamma_neg": float(mild["gamma_neg"]),
                        "win": float(mild["win"]), "chosen_nll": float(best["nll"]), "base_nll": base_nll,
                        "chosen_score": float(best["score"]),
                        "chosen_degenerate": float(best["degenerate"])})
    complete = [o for o in options if o["gamma_neg"] is not None]
    if not complete:
        return {"reason": "no setting met the rule; widen the grid or relax min_win / nll_tolerance",
                "candidates": options}
    complete.sort(key=lambda o: (-o["win"], o["chosen_nll"]))
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
