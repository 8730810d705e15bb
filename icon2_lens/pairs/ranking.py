"""Sampling and ranking: the judge's best of several samples is chosen, its worst rejected.

``sampling_ranking`` ranks with any pointwise judge; ``self_rewarding`` is the same with the
model rating its own samples.

Example:
    >>> import numpy as np
    >>> from icon2_lens.testing import tiny_model
    >>> class Wordy:  # a pointwise judge: more words is better
    ...     name, description, kind = "wordy", "counts words", "pointwise"
    ...     def score(self, instructions, responses):
    ...         return np.array([len(r.split()) for r in responses], dtype=float)
    >>> config = BaselineConfig(n_samples=3, max_new_tokens=6)
    >>> kept = [KeptInstruction(0, "tell me a story", "helpfulness")]
    >>> res = make_sampling_ranking_pairs(tiny_model(), kept, Wordy(), config, progress=False)
    >>> res.counts["done"], res.counts["samples"]
    (1, 3)
"""

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icon2_lens._types import LensModel
from icon2_lens.judge.base import PointwiseJudge
from icon2_lens.judge.rules import degeneracy
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import Generation, generate_rows

from .common import (
    BaselineConfig,
    baseline_settings,
    num,
    provenance,
    run_batches,
    sample_seed,
    spent,
)
from .records import KeptInstruction, PairsResult, make_record
from .store import PairStore, check_kept

__all__ = ["make_sampling_ranking_pairs", "make_self_rewarding_pairs", "check_judge"]

log = logging.getLogger(__name__)


def check_judge(judge: Any, source: str) -> dict[str, str]:
    name = getattr(judge, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"{source} needs a judge with a non-empty name (recorded as icon2_judge), got {name!r}"
        )
    kind = getattr(judge, "kind", None)
    if kind != "pointwise":
        raise ValueError(
            f"judge {name!r} is of kind {kind!r}; {source} needs a pointwise judge "
            "(score(instructions, responses) -> one float per response)"
        )
    if not callable(getattr(judge, "score", None)):
        raise ValueError(f"judge {name!r} has no score(instructions, responses) method")
    return {"name": name, "description": str(getattr(judge, "description", "")), "kind": kind}


def _score(judge: Any, instructions: list[str], responses: list[str]) -> np.ndarray:
    scores = np.asarray(judge.score(instructions, responses), dtype=np.float64)
    if scores.shape != (len(responses),):
        raise ValueError(
            f"judge {judge.name!r} returned scores of shape {scores.shape} for {len(responses)} responses; "
            "score() must return one float per response"
        )
    return scores


def _rank_one(
    item: KeptInstruction,
    gens: Sequence[Generation],
    bad: Sequence[str | None],
    scores: np.ndarray,
    prov_common: Mapping[str, Any],
    n_judged: int,
) -> tuple[dict[str, Any], str | None]:
    """The record of one instruction's samples, and its drop reason (``None`` when kept)."""
    usable = [k for k in range(len(gens)) if bad[k] is None and math.isfinite(scores[k])]
    best = max(usable, key=lambda k: scores[k], default=None)  # ties: the earliest sample
    worst = min(usable, key=lambda k: scores[k], default=None)
    reason = None
    if len(usable) < 2:
        reason = "too_few_usable"
    elif scores[best] == scores[worst]:
        reason = "tied"
    elif gens[best].text == gens[worst].text:
        reason = "identical"
    chosen = gens[best] if best is not None else None
    rejected = gens[worst] if worst is not None else None
    prov = {
        **prov_common,
        "icon2_n_samples": len(gens),
        "icon2_chosen_sample": best,
        "icon2_rejected_sample": worst,
        "icon2_chosen_score": num(scores[best]) if best is not None else None,
        "icon2_rejected_score": num(scores[worst]) if worst is not None else None,
        "icon2_score_spread": num(scores[best] - scores[worst]) if best is not None else None,
        "icon2_sample_scores": [num(s) for s in scores],
        "icon2_usable_samples": len(usable),
        "icon2_degenerate_samples": sum(b is not None for b in bad),
        "icon2_unscorable_samples": sum(
            b is None and not math.isfinite(s) for b, s in zip(bad, scores)
        ),
        "icon2_chosen_finished": chosen.finished if chosen else None,
        "icon2_rejected_finished": rejected.finished if rejected else None,
        "icon2_generated_samples": len(gens),
        "icon2_generated_tokens": sum(spent(g) for g in gens),
        "icon2_judged": n_judged,
    }
    rec = make_record(item, chosen.text if chosen else "", rejected.text if rejected else "", prov)
    if reason is not None:
        rec["icon2_drop_reason"] = reason
        rec["icon2_samples"] = [g.text for g in gens]
        rec["icon2_sample_degenerate"] = list(bad)
    return rec, reason


def _ranked_pairs(
    source: str,
    model: LensModel,
    kept: Sequence[KeptInstruction],
    judge: Any,
    config: BaselineConfig | None,
    out: str | Path | None,
    progress: bool,
    limit: int | None,
) -> PairsResult:
    config = config or BaselineConfig()
    judge_doc = check_judge(judge, source)
    ids = check_kept(kept)
    settings = baseline_settings(model, source, config, judge=judge_doc)
    store = PairStore(out, settings, ids)
    decoding, n = config.sample_decoding, config.n_samples
    prov_common = {**provenance(source, settings, decoding), "icon2_judge": judge_doc["name"]}
    tok, n_ctx = model.tokenizer, getattr(model.cfg, "n_ctx", None)

    def make_batch(
        batch: list[KeptInstruction],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rows = encode_prompts(tok, [render_chat(tok, k.instruction) for k in batch], max_len=n_ctx)
        gens = generate_rows(
            model,
            [row for row in rows for _ in range(n)],
            decoding,
            row_seeds=[sample_seed(k.index, s) for k in batch for s in range(n)],
            backend=config.backend,
        )
        bad = [degeneracy(g.text, g.token_ids, max_repetition=config.max_repetition) for g in gens]
        # degenerate samples are never ranked, so the judge does not see them
        judged = [i for i, b in enumerate(bad) if b is None]
        scores = np.full(len(gens), np.nan)
        if judged:
            scores[judged] = _score(
                judge, [batch[i // n].instruction for i in judged], [gens[i].text for i in judged]
            )
        pairs, drops = [], []
        for j, item in enumerate(batch):
            part = slice(j * n, (j + 1) * n)
            rec, reason = _rank_one(
                item,
                gens[part],
                bad[part],
                scores[part],
                prov_common,
                sum(b is None for b in bad[part]),
            )
            (pairs if reason is None else drops).append(rec)
        return pairs, drops

    return run_batches(
        store,
        kept,
        config.batch_size,
        make_batch,
        desc=f"{source} pairs",
        progress=progress,
        limit=limit,
        tokenizer=tok,
    )


def make_sampling_ranking_pairs(
    model: LensModel,
    kept: Sequence[KeptInstruction],
    judge: PointwiseJudge,
    config: BaselineConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> PairsResult:
    """Pairs by sampling and ranking: the judge's best of ``n_samples`` is chosen, its worst rejected.

    Each instruction (user turn only, no system prompt, no steering) is sampled
    ``config.n_samples`` times, all of a batch's samples in one generation. Degenerate samples
    (empty, repetition loops) and those the judge cannot score (NaN) are excluded; of the rest
    the highest-scoring one is chosen and the lowest-scoring one rejected, the earlier sample
    winning ties. An instruction is dropped when fewer than two samples are usable
    (``too_few_usable``), when best and worst score the same (``tied``) or their texts are
    identical (``identical``); its drop record lists every sample.

    Args:
        model: The bridge to sample from.
        kept: Instructions (their criterion is recorded, not used).
        judge: A pointwise judge (see :class:`PointwiseJudge`).
        config: Baseline settings (``n_samples``, ``sample_decoding``, ``batch_size``, ...).
        out: Output directory, resumed if it holds a run of this source with the same settings
            and judge.
        progress: Show a progress bar.
        limit: Stop after this many new batches (for tests of resuming).

    Returns:
        All pairs and drops in ``out`` (or made now), with counts including the cost totals.
        Records carry ``icon2_judge``, ``icon2_n_samples``, ``icon2_chosen_score``,
        ``icon2_rejected_score``, ``icon2_score_spread``, ``icon2_sample_scores`` (``None`` for
        samples not scored) and which samples were picked.
    """
    return _ranked_pairs("sampling_ranking", model, kept, judge, config, out, progress, limit)


def make_self_rewarding_pairs(
    model: LensModel,
    kept: Sequence[KeptInstruction],
    judge: PointwiseJudge,
    config: BaselineConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> PairsResult:
    """Self-rewarding pairs: :func:`make_sampling_ranking_pairs` with the model rating its own samples.

    ``judge`` should be the model's own pointwise self-rating (any pointwise judge is accepted;
    a judge whose ``model`` attribute is another object is warned about). Records are marked
    ``icon2_source="self_rewarding"`` and name the judge in ``icon2_judge``.
    """
    judge_model = getattr(judge, "model", None)
    if judge_model is not None and judge_model is not model:
        log.warning(
            "self_rewarding: judge %r rates with another model object than the one sampled",
            getattr(judge, "name", judge),
        )
    return _ranked_pairs("self_rewarding", model, kept, judge, config, out, progress, limit)
