"""γ and layer sweep: how strong, and where, to steer chosen and rejected responses.

For every control interval and every γ in the grid (plus γ = 0, the unsteered answer), each
sample instruction is answered once, steered along its criterion; all γ of one instruction run
in the same batch (per-row γ). Every response is judged by the unsteered model: its inherent
score along the direction (read over the response's tokens, ``read="mean"``), its per-token NLL
(fluency), its relevance to the request (pointwise mutual information, which reads no direction;
:class:`~icon2_lens.judge.reading.RelevanceJudge`), repetition and length, and whether it is
degenerate. :mod:`icon2_lens.pairs.sweep_rule` summarises the measurements and picks a setting.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from icon2_lens._types import LensModel
from icon2_lens.directions.set import DirectionSet
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.figures import PALETTE, plotly_go
from icon2_lens.judge.reading import RelevanceJudge, score_responses
from icon2_lens.judge.rules import degeneracy, repetition_rate
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import Decoding, generate_rows
from icon2_lens.model.hooks import parse_layers

from .records import KeptInstruction
from .sweep_rule import SweepConfig, SweepResult, choose_setting, summarize_sweep

__all__ = [
    "SweepConfig",
    "SweepResult",
    "run_sweep",
    "summarize_sweep",
    "choose_setting",
    "plot_sweep",
]

log = logging.getLogger(__name__)


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
        reference = RelevanceJudge(model).reference_nll(
            [texts[k].text for k in keys], progress=progress
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
                    "relevance": float(reference[n] - float(scored["nll"][n])),
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
