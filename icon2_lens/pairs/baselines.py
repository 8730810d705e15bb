"""Baseline pair sources that write the same records as the Icon² path, for like-for-like comparison.

Every source writes :func:`icon2_lens.pairs.icon2.generate_pairs`'s record format (TRL's conversational
preference format with an explicit user-only prompt, plus flat ``icon2_*`` provenance) into the same
``pairs.jsonl`` / ``dropped.jsonl`` / ``settings.json`` layout, resumable in the same way, so DPO
training and evaluation treat every source alike. ``icon2_source`` says which one made a record:

``icon2``
    Steering along the criterion direction on the consistency-filtered instructions
    (:func:`~icon2_lens.pairs.icon2.generate_pairs`).
``sp``
    System prompts instead of steering: chosen = the answer under the criterion's positive system
    prompt, rejected = under its negative one (:func:`make_sp_pairs`). The record's prompt is the
    user turn only, so the contrast DPO sees is one the prompt does not explain; such pairs are
    separated trivially (reward accuracy saturates), which is the comparison they exist for.
``sampling_ranking``
    ``n_samples`` seeded samples per instruction, scored by a pointwise judge; the best is chosen,
    the worst rejected (:func:`~icon2_lens.pairs.ranking.make_sampling_ranking_pairs`).
``self_rewarding``
    The same, with the model rating its own samples (:func:`~icon2_lens.pairs.ranking.make_self_rewarding_pairs`).
``icon2_unfiltered``
    Icon² steering on a seeded random sample of the unfiltered pool instead of the
    top-consistency instructions (:func:`make_icon2_unfiltered_pairs`).

A *pointwise judge* is any object with ``name``, ``description``, ``kind == "pointwise"`` and
``score(instructions, responses) -> np.ndarray`` (one float per response, higher is better, NaN
for a response it cannot score); see :class:`~icon2_lens.judge.base.PointwiseJudge`.

Cost totals are described in :mod:`icon2_lens.pairs.common`.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> make_pairs("ultrafeedback", tiny_model(), [KeptInstruction(0, "hello", "general")])
    Traceback (most recent call last):
    ...
    ValueError: unknown pair source 'ultrafeedback'; use one of icon2, sp, sampling_ranking, self_rewarding, icon2_unfiltered
"""

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icon2_lens._files import read_json, write_json
from icon2_lens._types import LensModel
from icon2_lens.directions.criteria import Criterion
from icon2_lens.directions.set import DirectionSet
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import generate_rows

from .common import BaselineConfig, baseline_settings, provenance, run_batches, spent, with_cost
from .icon2 import PairConfig, generate_pairs
from .ranking import check_judge, make_sampling_ranking_pairs, make_self_rewarding_pairs
from .records import KeptInstruction, PairsResult, sort_pair
from .store import SETTINGS_FILE, PairStore, check_kept

__all__ = [
    "SOURCES",
    "make_pairs",
    "make_sp_pairs",
    "make_icon2_unfiltered_pairs",
    "sample_unfiltered",
]

#: Every pair source, as recorded in ``icon2_source``.
SOURCES: tuple[str, ...] = ("icon2", "sp", "sampling_ranking", "self_rewarding", "icon2_unfiltered")

UNFILTERED_FILE = "unfiltered.json"


def sample_unfiltered(pool: Sequence[KeptInstruction], n: int, seed: int) -> list[KeptInstruction]:
    """A seeded random sample of ``n`` instructions of ``pool``, without replacement, in pool order.

    Instructions are ranked by a hash of ``(seed, index)``, so the sample depends only on the
    seed and the pool's indices (not on its order), and a smaller sample is part of a larger one.

    Example:
        >>> pool = [KeptInstruction(i, f"instruction {i}", "general") for i in range(10)]
        >>> picked = [k.index for k in sample_unfiltered(pool, 4, seed=0)]
        >>> picked == sorted(picked) and len(set(picked)) == 4
        True
        >>> picked == [k.index for k in sample_unfiltered(pool, 4, seed=0)]
        True
    """
    ids = check_kept(pool)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool):
        raise ValueError(f"cannot sample n={n!r} instructions from a pool of {len(pool)}")

    def rank(index: int) -> bytes:
        return hashlib.blake2b(f"{int(seed)}/{int(index)}".encode(), digest_size=8).digest()

    picked = set(sorted(ids, key=rank)[:n])
    return [k for k in pool if k.index in picked]


def make_sp_pairs(
    model: LensModel,
    kept: Sequence[KeptInstruction],
    criteria: Mapping[str, Criterion] | Sequence[Criterion],
    config: BaselineConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> PairsResult:
    """Pairs from opposite system prompts: chosen under ``P⁺``, rejected under ``P⁻``, no steering.

    Each instruction uses its own criterion's prompts; the record's prompt is the user turn alone.
    Chosen and rejected rows of a batch are generated together (and share the instruction's row
    seed, which matters only when ``config.greedy_decoding`` samples). Degenerate or identical pairs
    are dropped with their reason, as in :func:`~icon2_lens.pairs.icon2.generate_pairs`.

    Args:
        model: The bridge to answer with.
        kept: Instructions with their criterion.
        criteria: Criterion name -> :class:`~icon2_lens.directions.criteria.Criterion` (or a list of them).
        config: Baseline settings (``greedy_decoding``, ``batch_size``, ``max_repetition``).
        out: Output directory, resumed if it holds an ``sp`` run with the same settings.
        progress: Show a progress bar.
        limit: Stop after this many new batches (for tests of resuming).

    Returns:
        All pairs and drops in ``out`` (or made now), with counts including the cost totals.
    """
    config = config or BaselineConfig()
    crits = dict(criteria) if isinstance(criteria, Mapping) else {c.name: c for c in criteria}
    ids = check_kept(kept)
    missing = sorted({k.criterion for k in kept} - set(crits))
    if missing:
        raise ValueError(
            f"no system prompts for criteria {missing}; pass their Criterion objects "
            "(icon2_lens.directions.criteria.get_criteria or load_criteria_file)"
        )
    settings = baseline_settings(
        model, "sp", config, criteria={name: c.to_dict() for name, c in sorted(crits.items())}
    )
    store = PairStore(out, settings, ids)
    prov_common = provenance("sp", settings, config.greedy_decoding)
    tok, n_ctx = model.tokenizer, getattr(model.cfg, "n_ctx", None)

    def make_batch(
        batch: list[KeptInstruction],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        prompts = [
            render_chat(tok, k.instruction, system=crits[k.criterion].positive) for k in batch
        ]
        prompts += [
            render_chat(tok, k.instruction, system=crits[k.criterion].negative) for k in batch
        ]
        rows = encode_prompts(tok, prompts, max_len=n_ctx)
        gens = generate_rows(
            model,
            rows,
            config.greedy_decoding,
            row_seeds=[k.index for k in batch] * 2,
            backend=config.backend,
        )
        pairs, drops = [], []
        for j, item in enumerate(batch):
            c, r = gens[j], gens[len(batch) + j]
            sort_pair(
                item,
                c,
                r,
                {
                    **prov_common,
                    "icon2_chosen_finished": c.finished,
                    "icon2_rejected_finished": r.finished,
                    "icon2_generated_samples": 2,
                    "icon2_generated_tokens": spent(c) + spent(r),
                },
                config.max_repetition,
                pairs,
                drops,
            )
        return pairs, drops

    return run_batches(
        store,
        kept,
        config.batch_size,
        make_batch,
        desc="sp pairs",
        progress=progress,
        limit=limit,
        tokenizer=tok,
    )


def make_icon2_unfiltered_pairs(
    model: LensModel,
    pool: Sequence[KeptInstruction],
    n: int,
    direction_sets: Mapping[str, DirectionSet] | Sequence[DirectionSet],
    pair_config: PairConfig | None = None,
    *,
    seed: int = 0,
    intervals: Mapping[str, Sequence[int]] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> PairsResult:
    """Icon² steering on ``n`` instructions drawn at random from the unfiltered ``pool``.

    The ablation of the consistency filter: the same pairs as
    :func:`~icon2_lens.pairs.icon2.generate_pairs` (each instruction steered along its own argmax
    criterion), on :func:`sample_unfiltered` ``(pool, n, seed)`` instead of the top-consistency
    instructions. ``out`` also gets ``unfiltered.json`` (the seed, sample size, pool size and
    sampled indices); resuming with another sample is refused.

    Args:
        model: The bridge the directions were extracted from.
        pool: Every scored instruction with its argmax criterion.
        n: How many to sample.
        direction_sets: Criterion name -> direction set (or a list of sets).
        pair_config: Steering settings, as for :func:`~icon2_lens.pairs.icon2.generate_pairs`.
        seed: Seed of the sample.
        intervals: Criterion -> control layers, when ``pair_config.layers`` is ``None``.
        out: Output directory.
        progress: Show a progress bar.
        limit: Stop after this many new batches (for tests of resuming).

    Returns:
        The pairs (``icon2_source="icon2_unfiltered"``), with counts including the cost totals.
    """
    sample = sample_unfiltered(pool, n, seed)
    if out is not None:
        out_dir = Path(out)
        want = {"seed": seed, "n": n, "pool_size": len(pool), "indices": [k.index for k in sample]}
        settings_path, sample_path = out_dir / SETTINGS_FILE, out_dir / UNFILTERED_FILE
        if settings_path.is_file():
            have_source = read_json(settings_path).get("source", "icon2")
            if have_source != "icon2_unfiltered":
                raise ValueError(
                    f"{out_dir} holds pairs written with different settings (source {have_source!r}); "
                    "choose another output directory"
                )
        if sample_path.is_file() and read_json(sample_path) != want:
            raise ValueError(
                f"{out_dir} holds pairs of another random sample (differences in {UNFILTERED_FILE}: seed, n "
                "or pool); choose another output directory or delete it to start over"
            )
        if not sample_path.is_file():
            write_json(want, sample_path)
    result = generate_pairs(
        model,
        sample,
        direction_sets,
        pair_config,
        intervals=intervals,
        out=out,
        progress=progress,
        limit=limit,
        source="icon2_unfiltered",
    )
    return with_cost(result, model.tokenizer)


def make_pairs(
    source: str,
    model: LensModel,
    kept: Sequence[KeptInstruction],
    *,
    direction_sets: Mapping[str, DirectionSet] | Sequence[DirectionSet] | None = None,
    criteria: Mapping[str, Criterion] | Sequence[Criterion] | None = None,
    judge: Any = None,
    pair_config: PairConfig | None = None,
    config: BaselineConfig | None = None,
    intervals: Mapping[str, Sequence[int]] | None = None,
    n: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> PairsResult:
    """Make pairs from any of :data:`SOURCES`, in the common record format.

    Inputs a source does not use are ignored, so one call site can loop over sources.

    Args:
        source: ``icon2``, ``sp``, ``sampling_ranking``, ``self_rewarding`` or ``icon2_unfiltered``.
        model: The bridge.
        kept: The instructions (for ``icon2_unfiltered``: the unfiltered pool to sample from).
        direction_sets: Needed by ``icon2`` and ``icon2_unfiltered``.
        criteria: Needed by ``sp`` (the system prompts).
        judge: Needed by ``sampling_ranking`` and ``self_rewarding`` (a pointwise judge).
        pair_config: Steering settings of the Icon² sources.
        config: Settings of the other sources.
        intervals: Control intervals of the Icon² sources.
        n: Sample size of ``icon2_unfiltered`` (needed).
        seed: Sample seed of ``icon2_unfiltered``.
        out: Output directory.
        progress: Show a progress bar.
        limit: Stop after this many new batches.

    Returns:
        The source's :class:`~icon2_lens.pairs.records.PairsResult`, with cost totals in ``counts``.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> make_pairs("ultrafeedback", tiny_model(), [KeptInstruction(0, "hello", "general")])
        Traceback (most recent call last):
        ...
        ValueError: unknown pair source 'ultrafeedback'; use one of icon2, sp, sampling_ranking, self_rewarding, icon2_unfiltered
    """
    if source not in SOURCES:
        raise ValueError(f"unknown pair source {source!r}; use one of {', '.join(SOURCES)}")

    def need(value: Any, what: str, hint: str) -> None:
        if value is None:
            raise ValueError(f"pair source {source!r} needs {what}: {hint}")

    if source in ("icon2", "icon2_unfiltered"):
        need(
            direction_sets,
            "direction_sets",
            "the criterion directions (icon2_lens.directions.folder.load_extraction)",
        )
    if source == "icon2":
        result = generate_pairs(
            model,
            kept,
            direction_sets,
            pair_config,
            intervals=intervals,
            out=out,
            progress=progress,
            limit=limit,
            source="icon2",
        )
        return with_cost(result, model.tokenizer)
    if source == "icon2_unfiltered":
        need(n, "n", "how many instructions to sample from the pool")
        return make_icon2_unfiltered_pairs(
            model,
            kept,
            n,
            direction_sets,
            pair_config,
            seed=seed,
            intervals=intervals,
            out=out,
            progress=progress,
            limit=limit,
        )
    if source == "sp":
        need(
            criteria,
            "criteria",
            "the criteria's system prompts (icon2_lens.directions.criteria.get_criteria())",
        )
        return make_sp_pairs(model, kept, criteria, config, out=out, progress=progress, limit=limit)
    need(judge, "a judge", "a pointwise judge with name, description, kind='pointwise' and score()")
    check_judge(judge, source)
    make = (
        make_sampling_ranking_pairs if source == "sampling_ranking" else make_self_rewarding_pairs
    )
    return make(model, kept, judge, config, out=out, progress=progress, limit=limit)
