"""The sweep's measurements summarised, and the rules that pick a (interval, γ⁺, γ⁻) setting.

:func:`summarize_sweep` turns the per-response measurements of
:func:`~icon2_lens.pairs.sweep.run_sweep` into per-γ means and per-(γ⁺, γ⁻) win rates;
:func:`choose_setting` applies one of two rules, both in the spirit of Icon²'s App. J (which
judges with a reward model; none is available offline) and both recorded with the choice.

**The independent rule** (``rule_name="independent"``, the default) is decided by a judge that
reads no direction: relevance, the pointwise mutual information of request and answer under the
unsteered model (:class:`~icon2_lens.judge.reading.RelevanceJudge`), so that a setting cannot win
only by pushing along the direction it is judged by.

1. **γ⁺** (per interval): among γ ≥ 0 whose answers stay fluent (degenerate rate ≤
   ``max_degenerate``, mean NLL ≤ the unsteered NLL + ``nll_tolerance``) *and* read at least as
   relevant as the unsteered answers, the most relevant. γ⁺ = 0 (``one_sided``) means the chosen
   answer is the unsteered one: steering the other way only.
2. **γ⁻**: the mildest negative γ whose rejected answers lose to the chosen ones: the share of
   instructions whose pair would be kept *and* whose chosen answer is more relevant is ≥
   ``min_win``, *and* no single surface feature (length, apology opener, lists, hedges,
   repetition, opening words; :func:`~icon2_lens.judge.surface.feature_aucs`) tells the chosen
   from the rejected answers with strength ≥ ``max_cue`` (the audit's shortcut threshold).
3. **Interval**: the highest independent win rate, then the most relevant chosen answers, then
   the lowest chosen NLL. With no setting meeting the rule the choice is empty, with the reason
   and every candidate's numbers, rather than a setting that does not hold.

**The inherent rule** (``rule_name="inherent"``), judged along the steered direction itself:

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

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from icon2_lens._config import documented, option, parse_layer_spec
from icon2_lens.judge.surface import feature_aucs

__all__ = ["SweepConfig", "SweepResult", "summarize_sweep", "choose_setting"]


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
    rule_name: Literal["independent", "inherent"] = option(
        "independent",
        flag="--rule",
        help="independent: relevance (PMI, reads no direction) picks γ⁺ and judges γ⁻, and no "
        "surface cue may separate the pairs; inherent: the steered direction's own reading",
    )
    max_cue: float = option(
        0.7,
        help="independent rule: γ⁻ is refused when one surface cue separates its pairs this "
        "well (AUC strength, as the audit's shortcut check)",
    )
    one_sided: bool = option(
        True,
        help="independent rule: the unsteered answer (γ⁺ = 0) may be the chosen one when no "
        "positive γ reads at least as relevant",
    )

    def __post_init__(self) -> None:
        if not self.gammas or not all(np.isfinite(g) for g in self.gammas):
            raise ValueError(f"the γ grid must be non-empty and finite, got {self.gammas}")
        if not any(g < 0 for g in self.gammas):
            raise ValueError(
                f"the γ grid {list(self.gammas)} has no negative value, so no rejected answer can "
                "be made; add one or more, e.g. --gammas=-0.04,-0.02,0.02,0.04"
            )
        if not self.intervals:
            raise ValueError("name at least one layer interval")
        for spec in self.intervals:
            parse_layer_spec(
                spec
            )  # the text must read; the model's range is checked where it is known
        if self.n_instructions < 1 or self.batch_rows < 1 or self.max_new_tokens < 1:
            raise ValueError("n_instructions, batch_rows and max_new_tokens must be at least 1")

    def rule(self) -> dict[str, Any]:
        """The selection rule's parameters, as recorded in ``sweep.json``."""
        return {
            "min_win": self.min_win,
            "min_effect": self.min_effect,
            "max_degenerate": self.max_degenerate,
            "nll_tolerance": self.nll_tolerance,
            "rule": self.rule_name,
            "max_cue": self.max_cue,
            "one_sided": self.one_sided,
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


def summarize_sweep(responses: pd.DataFrame) -> SweepResult:
    """Per-γ means and, per (γ⁺, γ⁻), win rates and the effect size of the score gaps.

    ``pairs`` has one row per (interval, γ⁺ ≥ 0, γ⁻ < 0); γ⁺ = 0 is the one-sided pair (the
    unsteered answer as chosen). Columns: ``win`` (P(score(γ⁺) > score(γ⁻)) over all
    instructions), ``usable`` (share of pairs that would be kept: neither answer degenerate,
    texts differ), ``win_usable`` (kept *and* chosen above rejected) and ``effect`` (mean / sd of
    the gaps of kept pairs). When the responses carry ``relevance`` and ``text`` (every sweep
    run records them): ``win_independent`` (kept *and* chosen more relevant than rejected),
    ``cue`` and ``cue_strength`` (the surface feature that best tells the kept chosen answers from
    the rejected ones, :func:`~icon2_lens.judge.surface.feature_aucs`).
    """
    metrics = {"score": ("score", "mean"), "nll": ("nll", "mean")}
    if "relevance" in responses:
        metrics["relevance"] = ("relevance", "mean")
    by_gamma = (
        responses.groupby(["interval", "gamma"])
        .agg(
            **metrics,
            repetition=("repetition", "mean"),
            length=("length", "mean"),
            degenerate=("degenerate", "mean"),
            finished=("finished", "mean"),
            n=("score", "size"),
        )
        .reset_index()
    )
    independent = "relevance" in responses and "text" in responses
    rows = []
    for label, sub in responses.groupby("interval"):
        score = sub.pivot(index="index", columns="gamma", values="score")
        bad = sub.pivot(index="index", columns="gamma", values="degenerate").astype(bool)
        text = sub.pivot(index="index", columns="gamma", values="text") if "text" in sub else None
        rel = sub.pivot(index="index", columns="gamma", values="relevance") if independent else None
        for gp in [g for g in score.columns if g >= 0]:
            for gn in [g for g in score.columns if g < 0]:
                usable = ~bad[gp] & ~bad[gn]
                if text is not None:
                    usable &= text[gp] != text[gn]
                wins = score[gp] > score[gn]
                gap = (score[gp] - score[gn])[usable]
                row = {
                    "interval": label,
                    "gamma_pos": gp,
                    "gamma_neg": gn,
                    "win": float(wins.mean()),
                    "usable": float(usable.mean()),
                    "win_usable": float((wins & usable).mean()),
                    "effect": _effect(gap),
                }
                if independent:
                    row["win_independent"] = float(((rel[gp] > rel[gn]) & usable).mean())
                    row.update(_strongest_cue(list(zip(text[gp][usable], text[gn][usable]))))
                rows.append(row)
    return SweepResult(responses, by_gamma, pd.DataFrame(rows))


def _strongest_cue(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The surface feature that best separates chosen from rejected, and its strength."""
    if len(pairs) < 2:
        return {"cue": None, "cue_strength": float("nan")}
    top = feature_aucs(pairs).iloc[0]
    return {"cue": str(top["feature"]), "cue_strength": float(top["strength"])}


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
    rule: str | None = None,
    max_cue: float | None = None,
) -> dict[str, Any]:
    """Apply the selection rule of the module docstring; ``{}`` with a reason if nothing qualifies.

    The rule and its parameters come from ``config`` (default :class:`SweepConfig`); keywords
    override them. The choice records which rule made it (``rule``).
    """
    config = config or SweepConfig()
    over = {
        "min_win": min_win,
        "min_effect": min_effect,
        "max_degenerate": max_degenerate,
        "nll_tolerance": nll_tolerance,
        "rule_name": rule,
        "max_cue": max_cue,
    }
    config = replace(config, **{k: v for k, v in over.items() if v is not None})
    if config.rule_name == "independent":
        return _choose_independent(result, config)
    return _choose_inherent(result, config)


def _fluent(sub: pd.DataFrame, config: SweepConfig) -> tuple[pd.DataFrame, pd.Series | None]:
    """The γ ≥ 0 rows whose answers stay fluent, and the unsteered row (``None`` if absent)."""
    base = sub[sub["gamma"] == 0.0]
    base_nll = float(base["nll"].iloc[0]) if len(base) else float("inf")
    fluent = sub[
        (sub["gamma"] >= 0)
        & (sub["degenerate"] <= config.max_degenerate)
        & (sub["nll"] <= base_nll + config.nll_tolerance)
    ]
    return fluent, (base.iloc[0] if len(base) else None)


def _choose_inherent(result: SweepResult, config: SweepConfig) -> dict[str, Any]:
    options = []
    for label, sub in result.by_gamma.groupby("interval"):
        fluent, base = _fluent(sub, config)
        fluent = fluent[fluent["gamma"] > 0]
        if fluent.empty:
            continue
        best = fluent.sort_values(["score", "gamma"], ascending=[False, True]).iloc[0]
        gp = float(best["gamma"])
        pairs = result.pairs[
            (result.pairs["interval"] == label)
            & (result.pairs["gamma_pos"] == gp)
            & (result.pairs["win_usable"] >= config.min_win)
            & (result.pairs["effect"] >= config.min_effect)
        ]
        option = {
            "rule": "inherent",
            "interval": label,
            "gamma_pos": gp,
            "gamma_neg": None,
            "win": None,
            "chosen_nll": float(best["nll"]),
            "base_nll": float(base["nll"]) if base is not None else float("inf"),
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
    return _pick(
        options,
        "inherent",
        "no setting met the rule; widen the grid or relax min_win / nll_tolerance",
        key=lambda o: (-o["win"], -o["effect"], o["chosen_nll"]),
    )


def _choose_independent(result: SweepResult, config: SweepConfig) -> dict[str, Any]:
    if "relevance" not in result.by_gamma or "win_independent" not in result.pairs:
        raise ValueError(
            "the independent rule needs each response's relevance and text (sweeps run by this "
            "version record them); re-run the sweep, or choose with rule='inherent'"
        )
    options = []
    for label, sub in result.by_gamma.groupby("interval"):
        fluent, base = _fluent(sub, config)
        if base is None:
            continue
        fluent = fluent[fluent["relevance"] >= float(base["relevance"])]
        if not config.one_sided:
            fluent = fluent[fluent["gamma"] > 0]
        if fluent.empty:
            continue
        best = fluent.sort_values(["relevance", "gamma"], ascending=[False, False]).iloc[0]
        gp = float(best["gamma"])
        rows = result.pairs[(result.pairs["interval"] == label) & (result.pairs["gamma_pos"] == gp)]
        option: dict[str, Any] = {
            "rule": "independent",
            "interval": label,
            "gamma_pos": gp,
            "one_sided": gp == 0.0,
            "gamma_neg": None,
            "win": None,
            "chosen_relevance": float(best["relevance"]),
            "base_relevance": float(base["relevance"]),
            "chosen_nll": float(best["nll"]),
            "base_nll": float(base["nll"]),
            "chosen_degenerate": float(best["degenerate"]),
            "rejected_tried": [
                {
                    "gamma_neg": float(r["gamma_neg"]),
                    "win": float(r["win_independent"]),
                    "cue": r["cue"],
                    "cue_strength": float(r["cue_strength"]),
                }
                for r in rows.sort_values("gamma_neg", ascending=False).to_dict(orient="records")
            ],
        }
        ok = rows[
            (rows["win_independent"] >= config.min_win)
            & ~(rows["cue_strength"].fillna(1.0) >= config.max_cue)
        ]
        if not ok.empty:
            mild = ok.sort_values("gamma_neg", ascending=False).iloc[0]
            neg = sub[sub["gamma"] == mild["gamma_neg"]].iloc[0]
            option.update(
                gamma_neg=float(mild["gamma_neg"]),
                win=float(mild["win_independent"]),
                win_inherent=float(mild["win_usable"]),
                usable=float(mild["usable"]),
                cue=mild["cue"],
                cue_strength=float(mild["cue_strength"]),
                rejected_relevance=float(neg["relevance"]),
                rejected_nll=float(neg["nll"]),
            )
        options.append(option)
    return _pick(
        options,
        "independent",
        "no setting met the independent rule (a γ⁻ whose rejected answers are less relevant in "
        f"≥ {config.min_win:g} of pairs with no surface cue ≥ {config.max_cue:g}); see the "
        "candidates, widen the grid, relax --min-win, or choose with --rule inherent",
        key=lambda o: (-o["win"], -o["chosen_relevance"], o["chosen_nll"]),
    )


def _pick(options: list[dict[str, Any]], rule: str, reason: str, key) -> dict[str, Any]:
    """The best complete option by ``key``, or the reason and every candidate when none is."""
    complete = [o for o in options if o["gamma_neg"] is not None]
    if not complete:
        return {"rule": rule, "reason": reason, "candidates": options}
    return sorted(complete, key=key)[0]
