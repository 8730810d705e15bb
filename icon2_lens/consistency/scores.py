"""Inherent consistency: how strongly the model's own representation of an instruction already
points along each criterion's direction, and the filter that keeps the most consistent ones.

Default (Icon² Eq. 2-3, read literally): ``h_l`` is the residual stream at the instruction's last
token at layer ``l``; the score for criterion ``c`` is ``mean_l (h_l · u_c,l)`` over **all**
layers of the direction set (raw dot products, unit directions); an instruction's consistency
is the max over criteria, and the argmax criterion is the one its pair will be steered along.

Raw dot products are dominated by the late layers, where the residual norm is largest, and by
per-criterion offsets, so the argmax can be the same criterion for almost every instruction.
Variants (``scoring`` / ``layers``):

``scoring="cosine"``
    ``h_l · u / |h_l|`` — removes the norm growth with depth.
``scoring="zscore"``
    Each (criterion, layer) dot product standardised over the scored pool before averaging, so
    criteria compete on equal footing (scores are then relative to the pool).
``layers="control"``
    Average only over each criterion's control interval (the layers it will be steered at).

The instruction is wrapped as the model sees it when answering (``wrap="chat"``: the chat
template with the generation prompt, the same wrapping as at extraction); ``wrap="raw"`` uses
the bare text.

Example:
    >>> import torch
    >>> from icon2_lens.directions.set import DirectionSet
    >>> sets = [DirectionSet(criterion=c, layers=(0, 1), vectors=torch.eye(2, 4)[[i, 1 - i]])
    ...         for i, c in enumerate(["a", "b"])]
    >>> acts = torch.tensor([[[3.0, 0, 0, 0], [0, 1.0, 0, 0]], [[0, 2.0, 0, 0], [0, 0, 0, 0]]])
    >>> res = scores_from_activations(acts, list(range(2)), sets, instructions=["x", "y"])
    >>> res.best_criterion
    ['a', 'b']
    >>> res.select(fraction=0.5).kept
    [0]
"""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icon2_lens._types import LensModel
from icon2_lens.directions.set import DirectionSet, check_compatible
from icon2_lens.model.chat import render_chat
from icon2_lens.model.collect import collect_resid

__all__ = [
    "ConsistencyScores",
    "Selection",
    "score_consistency",
    "scores_from_activations",
    "wrap_instructions",
    "score_summary",
    "SCORINGS",
    "LAYER_MODES",
    "BALANCES",
]

log = logging.getLogger(__name__)

SCORINGS: tuple[str, ...] = ("dot", "cosine", "zscore")
LAYER_MODES: tuple[str, ...] = ("all", "control")
#: How the kept instructions are shared among criteria (see :meth:`ConsistencyScores.select`).
BALANCES: tuple[str, ...] = ("none", "quota")


@dataclass
class Selection:
    """Instructions kept by the filter.

    Attributes:
        kept: Indices of kept instructions, best first (``quota``: in the order they were taken).
        rule: ``top_fraction``, ``threshold`` or ``quota``.
        value: The fraction or the threshold.
        cutoff: Lowest kept score (NaN if none kept).
        criteria: The criterion each kept instruction is steered along: its argmax criterion,
            or under ``quota`` the criterion whose share it filled.
    """

    kept: list[int]
    rule: str
    value: float
    cutoff: float
    criteria: list[str] = field(default_factory=list)


@dataclass
class ConsistencyScores:
    """Per-criterion consistency of each instruction.

    Attributes:
        instructions: The scored instructions.
        criteria: Criterion names, one column of ``scores`` each.
        scores: ``[n, criterion]`` scores.
        settings: How they were computed (scoring, layers per criterion, wrap, site).
    """

    instructions: list[str]
    criteria: list[str]
    scores: Float[Tensor, "n criterion"]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = ~torch.isfinite(self.scores)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{int(bad.sum())} consistency score(s) are not finite (first: instruction {row}, "
                f"criterion {self.criteria[col]!r}), so a ranking would be arbitrary; check the "
                "direction sets (load them with load_direction_set) and the model's activations"
            )

    @property
    def best(self) -> Float[Tensor, " n"]:
        """Consistency of each instruction: the max over criteria."""
        return self.scores.max(dim=1).values

    @property
    def best_index(self) -> list[int]:
        return self.scores.argmax(dim=1).tolist()

    @property
    def best_criterion(self) -> list[str]:
        """The criterion each instruction is most consistent with (its steering criterion)."""
        return [self.criteria[j] for j in self.best_index]

    def select(
        self,
        *,
        fraction: float | None = 0.1,
        threshold: float | None = None,
        balance: str = "none",
    ) -> Selection:
        """Keep the top ``fraction`` (at least one) or every instruction scoring ``>= threshold``.

        ``balance="quota"`` keeps the same number of instructions: every criterion in turn takes
        the instruction it scores highest among those not yet taken, so each criterion gets an
        equal share (±1) and an instruction may be steered along a criterion other than its
        argmax. Ties are broken by input order, so the selection is deterministic.

        Example:
            >>> s = ConsistencyScores(["a", "b", "c", "d"], ["x", "y"],
            ...                       torch.tensor([[9.0, 1.0], [8.0, 2.0], [7.0, 3.0], [6.0, 0.0]]))
            >>> s.select(fraction=0.5).criteria, s.select(fraction=0.5, balance="quota").criteria
            (['x', 'x'], ['x', 'y'])
        """
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}; use one of {', '.join(BALANCES)}")
        best = self.best.tolist()
        crit = self.best_criterion
        order = sorted(range(len(best)), key=lambda i: (-best[i], i))
        if threshold is not None:
            if balance != "none":
                raise ValueError("balance='quota' keeps a fraction; pass fraction, not threshold")
            if not math.isfinite(threshold):
                raise ValueError(f"threshold must be finite, got {threshold}")
            kept = [i for i in order if best[i] >= threshold]
            rule, value = "threshold", float(threshold)
        else:
            if fraction is None or not 0 < fraction <= 1:
                raise ValueError(f"fraction must be in (0, 1], got {fraction}")
            n_keep = max(1, math.ceil(fraction * len(order)))
            if balance == "quota":
                kept, assigned = self._quota(n_keep)
                scores = self.scores.tolist()
                chosen = [scores[i][self.criteria.index(c)] for i, c in zip(kept, assigned)]
                cutoff = min(chosen) if chosen else float("nan")
                return Selection(kept, "quota", float(fraction), cutoff, assigned)
            kept = order[:n_keep]
            rule, value = "top_fraction", float(fraction)
        cutoff = best[kept[-1]] if kept else float("nan")
        return Selection(
            kept=kept, rule=rule, value=value, cutoff=cutoff, criteria=[crit[i] for i in kept]
        )

    def _quota(self, n_keep: int) -> tuple[list[int], list[str]]:
        """Round-robin over criteria, each taking its best instruction not yet taken."""
        scores = self.scores.tolist()
        n, k = len(scores), len(self.criteria)
        ranked = [sorted(range(n), key=lambda i: (-scores[i][c], i)) for c in range(k)]
        pos, taken, kept, assigned = [0] * k, set(), [], []
        while len(kept) < min(n_keep, n):
            for c in range(k):
                while pos[c] < n and ranked[c][pos[c]] in taken:
                    pos[c] += 1
                if pos[c] < n and len(kept) < n_keep:
                    i = ranked[c][pos[c]]
                    taken.add(i)
                    kept.append(i)
                    assigned.append(self.criteria[c])
        return kept, assigned

    def table(self, selection: Selection | None = None) -> pd.DataFrame:
        """One row per instruction: scores per criterion, best, argmax criterion, kept flag."""
        df = pd.DataFrame(self.scores.numpy(), columns=[f"score_{c}" for c in self.criteria])
        df.insert(0, "instruction", self.instructions)
        df["consistency"] = self.best.numpy()
        df["criterion"] = self.best_criterion
        if selection is not None:
            kept = set(selection.kept)
            df["kept"] = [i in kept for i in range(len(df))]
        return df

    def examples(self, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The ``k`` most and least consistent instructions."""
        df = self.table().sort_values("consistency", ascending=False, kind="stable")
        cols = ["instruction", "criterion", "consistency"]
        return df.head(k)[cols], df.tail(k)[cols].iloc[::-1]


def wrap_instructions(tokenizer, instructions: Sequence[str], wrap: str = "chat") -> list[str]:
    """Render instructions as scored: ``chat`` (template + generation prompt) or ``raw``."""
    if wrap == "chat":
        return [render_chat(tokenizer, d) for d in instructions]
    if wrap == "raw":
        return list(instructions)
    raise ValueError(f"unknown wrap {wrap!r}; use 'chat' or 'raw'")


def _layers_for(
    ds: DirectionSet, layers: str | Sequence[int], control: Mapping[str, Sequence[int]] | None
) -> list[int]:
    if isinstance(layers, str):
        if layers == "all":
            return list(ds.layers)
        if layers == "control":
            if not control or ds.criterion not in control:
                raise ValueError(
                    f"layers='control' needs the control interval of {ds.criterion!r} (control_layers)"
                )
            chosen = list(control[ds.criterion])
        else:
            raise ValueError(
                f"unknown layers {layers!r}; use one of {', '.join(LAYER_MODES)} or a list"
            )
    else:
        chosen = list(layers)
    missing = [layer for layer in chosen if layer not in ds.layers]
    if missing or not chosen:
        raise ValueError(
            f"layers {missing or chosen} are not in the {ds.criterion!r} direction set"
        )
    return chosen


def scores_from_activations(
    acts: Float[Tensor, "n layer d_model"],
    act_layers: Sequence[int],
    direction_sets: Sequence[DirectionSet],
    *,
    instructions: Sequence[str],
    scoring: str = "dot",
    layers: str | Sequence[int] = "all",
    control_layers: Mapping[str, Sequence[int]] | None = None,
) -> ConsistencyScores:
    """Consistency scores from already cached activations (``acts[:, j]`` is layer ``act_layers[j]``)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}")
    if not direction_sets:
        raise ValueError("no direction sets given")
    if acts.shape[0] != len(instructions):
        raise ValueError(f"{acts.shape[0]} activation rows for {len(instructions)} instructions")
    names = [ds.criterion for ds in direction_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate criteria among the direction sets: {names}")
    columns, used = [], {}
    for ds in direction_sets:
        if ds.d_model != acts.shape[-1]:
            raise ValueError(
                f"the {ds.criterion!r} directions have width {ds.d_model}, the activations {acts.shape[-1]}: "
                "they come from another model"
            )
        chosen = _layers_for(ds, layers, control_layers)
        used[ds.criterion] = chosen
        idx = [list(act_layers).index(layer) for layer in chosen]
        h = acts[:, idx].to(torch.float64)
        u = ds.subset(chosen).vectors.to(torch.float64)
        dots = torch.einsum("nld,ld->nl", h, u)
        if scoring == "cosine":
            dots = dots / h.norm(dim=-1).clamp_min(1e-12)
        elif scoring == "zscore":
            sd = dots.std(dim=0, unbiased=False).clamp_min(1e-12)
            dots = (dots - dots.mean(dim=0)) / sd
        columns.append(dots.mean(dim=1))
    scores = torch.stack(columns, dim=1).to(torch.float32)
    settings = {
        "scoring": scoring,
        "layers": layers if isinstance(layers, str) else list(layers),
        "layers_used": used,
    }
    return ConsistencyScores(list(instructions), names, scores, settings)


def score_consistency(
    model: LensModel,
    instructions: Sequence[str],
    direction_sets: Sequence[DirectionSet],
    *,
    scoring: str = "dot",
    layers: str | Sequence[int] = "all",
    control_layers: Mapping[str, Sequence[int]] | None = None,
    wrap: str = "chat",
    batch_size: int = 16,
    progress: bool = True,
    backend: str = "fast",
) -> ConsistencyScores:
    """Score ``instructions`` against every criterion (see the module docstring for the variants).

    Args:
        model: The bridge the directions were extracted from.
        instructions: Instructions to score.
        direction_sets: One set per criterion, all at the same site.
        scoring: ``dot`` (paper), ``cosine`` or ``zscore``.
        layers: ``all`` (paper), ``control`` (needs ``control_layers``) or explicit block indices.
        control_layers: Criterion -> its control interval's layers.
        wrap: ``chat`` or ``raw`` (see the module docstring).
        batch_size: Prompts per forward pass.
        progress: Show a progress bar.
        backend: Forward pass used to read the residuals (``fast`` or ``bridge``, see
            :func:`~icon2_lens.model.collect.collect_resid`).
    """
    if len(instructions) == 0:
        raise ValueError("no instructions to score")
    if not direction_sets:
        raise ValueError("no direction sets given")
    sites = {ds.site for ds in direction_sets}
    if len(sites) != 1:
        raise ValueError(f"direction sets read at different sites {sorted(sites)}; use one site")
    for ds in direction_sets:
        check_compatible(ds, model, check_fingerprint=False)
    need = sorted(
        {layer for ds in direction_sets for layer in _layers_for(ds, layers, control_layers)}
    )
    texts = wrap_instructions(model.tokenizer, instructions, wrap)
    acts = collect_resid(
        model,
        texts,
        layers=need,
        site=sites.pop(),
        batch_size=batch_size,
        progress=progress,
        desc="consistency",
        backend=backend,
    )
    res = scores_from_activations(
        acts,
        need,
        direction_sets,
        instructions=instructions,
        scoring=scoring,
        layers=layers,
        control_layers=control_layers,
    )
    res.settings["wrap"] = wrap
    res.settings["site"] = direction_sets[0].site
    return res


def score_summary(scores: ConsistencyScores, selection: Selection) -> dict[str, Any]:
    """Counts per argmax criterion among all and kept instructions, and score quantiles."""
    crit = scores.best_criterion
    kept = selection.criteria or [crit[i] for i in selection.kept]
    best = scores.best.numpy()
    return {
        "n_scored": len(crit),
        "n_kept": len(selection.kept),
        "rule": selection.rule,
        "value": selection.value,
        "cutoff": selection.cutoff,
        "criterion_counts_all": {c: crit.count(c) for c in scores.criteria},
        "criterion_counts_kept": {c: kept.count(c) for c in scores.criteria},
        "kept_off_argmax": sum(crit[i] != c for i, c in zip(selection.kept, kept)),
        "quantiles": {q: float(np.quantile(best, q)) for q in (0.0, 0.5, 0.9, 1.0)},
    }
