"""Baseline pair sources that write the same records as the Icon² path, for like-for-like comparison.

Every source writes :func:`icon2_lens.pairs.generate_pairs`'s record format (TRL's conversational
preference format with an explicit user-only prompt, plus flat ``icon2_*`` provenance) into the same
``pairs.jsonl`` / ``dropped.jsonl`` / ``settings.json`` layout, resumable in the same way, so DPO
training and evaluation treat every source alike. ``icon2_source`` says which one made a record:

``icon2``
    Steering along the criterion direction on the consistency-filtered instructions
    (:func:`~icon2_lens.pairs.generate_pairs`).
``sp``
    System prompts instead of steering: chosen = the answer under the criterion's positive system
    prompt, rejected = under its negative one (:func:`make_sp_pairs`). The record's prompt is the
    user turn only, so the contrast DPO sees is one the prompt does not explain; such pairs are
    separated trivially (reward accuracy saturates), which is the comparison they exist for.
``sampling_ranking``
    ``n_samples`` seeded samples per instruction, scored by a pointwise judge; the best is chosen,
    the worst rejected (:func:`make_sampling_ranking_pairs`).
``self_rewarding``
    The same, with the model rating its own samples (:func:`make_self_rewarding_pairs`).
``icon2_unfiltered``
    Icon² steering on a seeded random sample of the unfiltered pool instead of the
    top-consistency instructions (:func:`make_icon2_unfiltered_pairs`).

A *pointwise judge* is any object with ``name``, ``description``, ``kind == "pointwise"`` and
``score(instructions, responses) -> np.ndarray`` (one float per response, higher is better, NaN
for a response it cannot score); see :class:`PointwiseJudge`.

Cost: every baseline record carries ``icon2_generated_samples`` (generations made for its
instruction) and ``icon2_generated_tokens`` (tokens generated, each row's stop token included:
one forward step each); ``counts`` sums them over the directory (``samples``,
``generated_tokens``) with the number of responses the judge scored (``judged``). Icon² records do
not carry token counts, so for them :func:`make_pairs` re-tokenises the two responses and says so
(``generated_tokens_exact`` is ``False``).

Example:
    >>> import numpy as np
    >>> from icon2_lens.generate import Decoding
    >>> from icon2_lens.testing import tiny_model
    >>> class Wordy:  # a pointwise judge: more words is better
    ...     name, description, kind = "wordy", "counts words", "pointwise"
    ...     def score(self, instructions, responses):
    ...         return np.array([len(r.split()) for r in responses], dtype=float)
    >>> config = BaselineConfig(n_samples=3, sample_decoding=Decoding(do_sample=True, max_new_tokens=6))
    >>> kept = [KeptInstruction(0, "tell me a story", "helpfulness")]
    >>> res = make_sampling_ranking_pairs(tiny_model(), kept, Wordy(), config, progress=False)
    >>> res.counts["done"], res.counts["samples"]
    (1, 3)
"""

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from ._types import LensModel
from .chat import encode_prompts, render_chat
from .criteria import Criterion
from .directions import DirectionSet
from .generate import BACKENDS, Decoding, Generation, generate_rows
from .io import write_json
from .models import model_fingerprint
from .pairs import (
    KeptInstruction,
    PairConfig,
    PairsResult,
    _check_kept,
    _PairStore,
    _record,
    _sort_pair,
    generate_pairs,
)
from .score import degeneracy

__all__ = [
    "SOURCES",
    "BaselineConfig",
    "PointwiseJudge",
    "make_pairs",
    "make_sp_pairs",
    "make_sampling_ranking_pairs",
    "make_self_rewarding_pairs",
    "make_icon2_unfiltered_pairs",
    "sample_unfiltered",
    "sample_seed",
]

log = logging.getLogger(__name__)

#: Every pair source, as recorded in ``icon2_source``.
SOURCES: tuple[str, ...] = ("icon2", "sp", "sampling_ranking", "self_rewarding", "icon2_unfiltered")

_FORMAT = "icon2-lens pairs v1"
_UNFILTERED_FILE = "unfiltered.json"


@runtime_checkable
class PointwiseJudge(Protocol):
    """What the ranking baselines need from a judge.

    Attributes:
        name: Recorded with every pair (``icon2_judge``) and in ``settings.json``.
        description: What the score means (recorded in ``settings.json``).
        kind: ``"pointwise"``: one score per response, independent of the others.
    """

    name: str
    description: str
    kind: str

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> Any:
        """``[n]`` floats, higher is better, NaN where a response cannot be scored."""
        ...


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """How the baseline pairs are made; the fields that change them go to ``settings.json``.

    Attributes:
        n_samples: Samples per instruction for the ranking sources (the papers' baselines use 5).
        sample_decoding: Decoding of those samples (must sample); sample ``k`` of instruction
            ``i`` draws from the row seed :func:`sample_seed` ``(i, k)``.
        greedy_decoding: Decoding of the system-prompt answers (greedy by default; with sampling,
            chosen and rejected share their instruction's seed, as in Icon²).
        batch_size: Instructions per batch (``n_samples`` rows each for ranking, two for ``sp``).
        max_repetition: Repetition rate above which a response counts as degenerate.
        backend: Generation backend (``auto``, ``fast``, ``bridge``); does not change results.

    Example:
        >>> sorted(BaselineConfig().settings("sp"))
        ['greedy_decoding', 'max_repetition']
        >>> BaselineConfig(n_samples=1)
        Traceback (most recent call last):
        ...
        ValueError: n_samples must be an integer >= 2 (best and worst of several samples), got 1
    """

    n_samples: int = 5
    sample_decoding: Decoding = field(
        default_factory=lambda: Decoding(do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=128, seed=0)
    )
    greedy_decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=128))
    batch_size: int = 8
    max_repetition: float = 0.5
    backend: Literal["auto", "fast", "bridge"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 2:
            raise ValueError(
                f"n_samples must be an integer >= 2 (best and worst of several samples), got {self.n_samples!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.max_repetition <= 1:
            raise ValueError(f"max_repetition must be in [0, 1], got {self.max_repetition}")
        if not self.sample_decoding.do_sample:
            raise ValueError(
                "sample_decoding must sample (do_sample=True): greedy samples of one prompt are all identical"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")

    def settings(self, source: str | None = None) -> dict[str, Any]:
        """The settings that change the pairs of ``source`` (all sources' when ``None``).

        The batch size and backend never change them and are left out.
        """
        out = asdict(self)
        out["sample_decoding"] = self.sample_decoding.to_dict()
        out["greedy_decoding"] = self.greedy_decoding.to_dict()
        del out["batch_size"], out["backend"]
        if source == "sp":
            del out["n_samples"], out["sample_decoding"]
        elif source in ("sampling_ranking", "self_rewarding"):
            del out["greedy_decoding"]
        return out


def sample_seed(index: int, k: int) -> int:
    """The row seed of sample ``k`` of instruction ``index`` (a 56-bit hash of both).

    It depends on nothing else, so a sample is the same whatever the batch, the number of
    samples or the instructions around it.

    Example:
        >>> sample_seed(3, 0) == sample_seed(3, 0) != sample_seed(3, 1)
        True
    """
    digest = hashlib.blake2b(f"{int(index)}/{int(k)}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


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
    ids = _check_kept(pool)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool):
        raise ValueError(f"cannot sample n={n!r} instructions from a pool of {len(pool)}")

    def rank(index: int) -> bytes:
        return hashlib.blake2b(f"{int(seed)}/{int(index)}".encode(), digest_size=8).digest()

    picked = set(sorted(ids, key=rank)[:n])
    return [k for k in pool if k.index in picked]


# ---------------------------------------------------------------------------------------------
# Shared machinery


def _num(x: float) -> float | None:
    """A finite float, or ``None`` (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _spent(g: Generation) -> int:
    """Tokens generated for one row: its tokens plus the stop token when it finished."""
    return len(g.token_ids) + int(g.finished)


def _settings(model: LensModel, source: str, config: BaselineConfig, **extra: Any) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "source": source,
        "baseline_config": config.settings(source),
        "model": getattr(model.cfg, "model_name", None),
        "model_fingerprint": model_fingerprint(model),
        **extra,
    }


def _provenance(source: str, settings: Mapping[str, Any], decoding: Decoding) -> dict[str, Any]:
    return {
        "icon2_source": source,
        "icon2_max_new_tokens": decoding.max_new_tokens,
        "icon2_do_sample": decoding.do_sample,
        "icon2_temperature": decoding.temperature,
        "icon2_top_p": decoding.top_p,
        "icon2_seed": decoding.seed,
        "icon2_model": settings["model"],
        "icon2_model_fingerprint": settings["model_fingerprint"],
    }


def _run(
    store: _PairStore,
    kept: Sequence[KeptInstruction],
    batch_size: int,
    make_batch: Callable[[list[KeptInstruction]], tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    *,
    desc: str,
    progress: bool,
    limit: int | None,
    tokenizer: Any,
) -> PairsResult:
    for n_batch, batch in enumerate(tqdm(store.todo(kept, batch_size), desc=desc, unit="batch",
                                         disable=not progress)):
        if limit is not None and n_batch >= limit:
            break
        store.add(*make_batch(batch))
    return _with_cost(store.result(), tokenizer)


def _with_cost(result: PairsResult, tokenizer: Any) -> PairsResult:
    """Add ``samples``, ``generated_tokens``, ``judged`` (and sample quality totals) to the counts."""
    samples = tokens = judged = degenerate = unscorable = 0
    exact = True
    for r in result.records + result.dropped:
        if "icon2_generated_tokens" in r:
            samples += r["icon2_generated_samples"]
            tokens += r["icon2_generated_tokens"]
        else:  # an Icon² record: two generations, counted by re-tokenising them
            exact = False
            samples += 2
            for side in ("chosen", "rejected"):
                ids = tokenizer(r[side][0]["content"], add_special_tokens=False)["input_ids"]
                tokens += len(ids) + int(bool(r.get(f"icon2_{side}_finished")))
        judged += r.get("icon2_judged", 0)
        degenerate += r.get("icon2_degenerate_samples", 0)
        unscorable += r.get("icon2_unscorable_samples", 0)
    result.counts.update(samples=samples, generated_tokens=tokens, generated_tokens_exact=exact, judged=judged)
    if any("icon2_n_samples" in r for r in result.records + result.dropped):
        result.counts["degenerate_sample_rate"] = degenerate / samples if samples else float("nan")
        result.counts["unscorable_sample_rate"] = unscorable / samples if samples else float("nan")
    return result


# ---------------------------------------------------------------------------------------------
# System prompts


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
    are dropped with their reason, as in :func:`~icon2_lens.pairs.generate_pairs`.

    Args:
        model: The bridge to answer with.
        kept: Instructions with their criterion.
        criteria: Criterion name -> :class:`~icon2_lens.criteria.Criterion` (or a list of them).
        config: Baseline settings (``greedy_decoding``, ``batch_size``, ``max_repetition``).
        out: Output directory, resumed if it holds an ``sp`` run with the same settings.
        progress: Show a progress bar.
        limit: Stop after this many new batches (for tests of resuming).

    Returns:
        All pairs and drops in ``out`` (or made now), with counts including the cost totals.
    """
    config = config or BaselineConfig()
    crits = dict(criteria) if isinstance(criteria, Mapping) else {c.name: c for c in criteria}
    ids = _check_kept(kept)
    missing = sorted({k.criterion for k in kept} - set(crits))
    if missing:
        raise ValueError(
            f"no system prompts for criteria {missing}; pass their Criterion objects "
            "(icon2_lens.criteria.get_criteria or load_criteria_file)"
        )
    settings = _settings(model, "sp", config,
                         criteria={name: c.to_dict() for name, c in sorted(crits.items())})
    store = _PairStore(out, settings, ids)
    prov_common = _provenance("sp", settings, config.greedy_decoding)
    tok, n_ctx = model.tokenizer, getattr(model.cfg, "n_ctx", None)

    def make_batch(batch: list[KeptInstruction]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        prompts = [render_chat(tok, k.instruction, system=crits[k.criterion].positive) for k in batch]
        prompts += [render_chat(tok, k.instruction, system=crits[k.criterion].negative) for k in batch]
        rows = encode_prompts(tok, prompts, max_len=n_ctx)
        gens = generate_rows(model, rows, config.greedy_decoding, row_seeds=[k.index for k in batch] * 2,
                             backend=config.backend)
        pairs, drops = [], []
        for j, item in enumerate(batch):
            c, r = gens[j], gens[len(batch) + j]
            _sort_pair(item, c, r, {
                **prov_common,
                "icon2_chosen_finished": c.finished,
                "icon2_rejected_finished": r.finished,
                "icon2_generated_samples": 2,
                "icon2_generated_tokens": _spent(c) + _spent(r),
            }, config.max_repetition, pairs, drops)
        return pairs, drops

    return _run(store, kept, config.batch_size, make_batch, desc="sp pairs", progress=progress, limit=limit,
                tokenizer=tok)


# ---------------------------------------------------------------------------------------------
# Sampling + ranking


def _check_judge(judge: Any, source: str) -> dict[str, str]:
    name = getattr(judge, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{source} needs a judge with a non-empty name (recorded as icon2_judge), got {name!r}")
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
        "icon2_chosen_score": _num(scores[best]) if best is not None else None,
        "icon2_rejected_score": _num(scores[worst]) if worst is not None else None,
        "icon2_score_spread": _num(scores[best] - scores[worst]) if best is not None else None,
        "icon2_sample_scores": [_num(s) for s in scores],
        "icon2_usable_samples": len(usable),
        "icon2_degenerate_samples": sum(b is not None for b in bad),
        "icon2_unscorable_samples": sum(b is None and not math.isfinite(s) for b, s in zip(bad, scores)),
        "icon2_chosen_finished": chosen.finished if chosen else None,
        "icon2_rejected_finished": rejected.finished if rejected else None,
        "icon2_generated_samples": len(gens),
        "icon2_generated_tokens": sum(_spent(g) for g in gens),
        "icon2_judged": n_judged,
    }
    rec = _record(item, chosen.text if chosen else "", rejected.text if rejected else "", prov)
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
    judge_doc = _check_judge(judge, source)
    ids = _check_kept(kept)
    settings = _settings(model, source, config, judge=judge_doc)
    store = _PairStore(out, settings, ids)
    decoding, n = config.sample_decoding, config.n_samples
    prov_common = {**_provenance(source, settings, decoding), "icon2_judge": judge_doc["name"]}
    tok, n_ctx = model.tokenizer, getattr(model.cfg, "n_ctx", None)

    def make_batch(batch: list[KeptInstruction]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rows = encode_prompts(tok, [render_chat(tok, k.instruction) for k in batch], max_len=n_ctx)
        gens = generate_rows(model, [row for row in rows for _ in range(n)], decoding,
                             row_seeds=[sample_seed(k.index, s) for k in batch for s in range(n)],
                             backend=config.backend)
        bad = [degeneracy(g.text, g.token_ids, max_repetition=config.max_repetition) for g in gens]
        # degenerate samples are never ranked, so the judge does not see them
        judged = [i for i, b in enumerate(bad) if b is None]
        scores = np.full(len(gens), np.nan)
        if judged:
            scores[judged] = _score(judge, [batch[i // n].instruction for i in judged],
                                    [gens[i].text for i in judged])
        pairs, drops = [], []
        for j, item in enumerate(batch):
            part = slice(j * n, (j + 1) * n)
            rec, reason = _rank_one(item, gens[part], bad[part], scores[part], prov_common,
                                    sum(b is None for b in bad[part]))
            (pairs if reason is None else drops).append(rec)
        return pairs, drops

    return _run(store, kept, config.batch_size, make_batch, desc=f"{source} pairs", progress=progress,
                limit=limit, tokenizer=tok)


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
        log.warning("self_rewarding: judge %r rates with another model object than the one sampled",
                    getattr(judge, "name", judge))
    return _ranked_pairs("self_rewarding", model, kept, judge, config, out, progress, limit)


# ---------------------------------------------------------------------------------------------
# Icon² without the consistency filter


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
    :func:`~icon2_lens.pairs.generate_pairs` (each instruction steered along its own argmax
    criterion), on :func:`sample_unfiltered` ``(pool, n, seed)`` instead of the top-consistency
    instructions. ``out`` also gets ``unfiltered.json`` (the seed, sample size, pool size and
    sampled indices); resuming with another sample is refused.

    Args:
        model: The bridge the directions were extracted from.
        pool: Every scored instruction with its argmax criterion.
        n: How many to sample.
        direction_sets: Criterion name -> direction set (or a list of sets).
        pair_config: Steering settings, as for :func:`~icon2_lens.pairs.generate_pairs`.
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
        settings_path, sample_path = out_dir / "settings.json", out_dir / _UNFILTERED_FILE
        if settings_path.is_file():
            have_source = json.loads(settings_path.read_text(encoding="utf-8")).get("source", "icon2")
            if have_source != "icon2_unfiltered":
                raise ValueError(
                    f"{out_dir} holds pairs written with different settings (source {have_source!r}); "
                    "choose another output directory"
                )
        if sample_path.is_file() and json.loads(sample_path.read_text(encoding="utf-8")) != want:
            raise ValueError(
                f"{out_dir} holds pairs of another random sample (differences in {_UNFILTERED_FILE}: seed, n "
                "or pool); choose another output directory or delete it to start over"
            )
        write_json(want, sample_path)
    result = generate_pairs(model, sample, direction_sets, pair_config, intervals=intervals, out=out,
                            progress=progress, limit=limit, source="icon2_unfiltered")
    return _with_cost(result, model.tokenizer)


# ---------------------------------------------------------------------------------------------
# Dispatcher


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
        The source's :class:`~icon2_lens.pairs.PairsResult`, with cost totals in ``counts``.

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
        need(direction_sets, "direction_sets", "the criterion directions (icon2_lens.io.load_extraction)")
    if source == "icon2":
        result = generate_pairs(model, kept, direction_sets, pair_config, intervals=intervals, out=out,
                                progress=progress, limit=limit, source="icon2")
        return _with_cost(result, model.tokenizer)
    if source == "icon2_unfiltered":
        need(n, "n", "how many instructions to sample from the pool")
        return make_icon2_unfiltered_pairs(model, kept, n, direction_sets, pair_config, seed=seed,
                                           intervals=intervals, out=out, progress=progress, limit=limit)
    if source == "sp":
        need(criteria, "criteria", "the criteria's system prompts (icon2_lens.criteria.get_criteria())")
        return make_sp_pairs(model, kept, criteria, config, out=out, progress=progress, limit=limit)
    need(judge, "a judge", "a pointwise judge with name, description, kind='pointwise' and score()")
    _check_judge(judge, source)
    make = make_sampling_ranking_pairs if source == "sampling_ranking" else make_self_rewarding_pairs
    return make(model, kept, judge, config, out=out, progress=progress, limit=limit)
