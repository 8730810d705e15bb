"""Bidirectional inherent control: one chosen (+γ⁺) and one rejected (γ⁻) response per instruction.

For each kept instruction the model answers twice with its residual stream pushed along the
instruction's argmax criterion direction ``u_l`` at every layer ``l`` of the control interval:
``h_l ← h_l + γ⁺·s_l·u_l`` for the chosen answer, ``γ⁻`` (negative) for the rejected one, where
``s_l`` is the layer's mean residual norm when ``unit="relative"`` (see :mod:`icon2_lens.steer`).
Chosen and rejected rows of several instructions — possibly of different criteria — run in one
batch: each criterion gets one steering spec whose per-row γ is γ⁺ on its chosen rows, γ⁻ on its
rejected rows and exactly 0 elsewhere.

Records follow TRL's conversational preference format with an explicit prompt, plus flat
``icon2_*`` provenance columns::

    {"prompt": [{"role": "user", "content": ...}],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "icon2_index": 17, "icon2_criterion": "helpfulness", "icon2_source": "icon2",
     "icon2_gamma_pos": 0.04, ...}

``icon2_source`` names what made the pair (``icon2`` here; :mod:`icon2_lens.baselines` writes the
same format for its baselines), so pairs of different origins can be trained and evaluated alike.

Writing is incremental (one fsync'd append per batch) and resumable: every instruction ends up in
exactly one line of ``pairs.jsonl`` or ``dropped.jsonl``; a re-run skips the instructions already
there, and refuses to continue a file written with different settings (``settings.json``).
Batches are fixed slices of the instruction list and every row samples from its own seeded
generator, so a resumed run writes the same pairs as an uninterrupted one.
"""

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ._types import LensModel
from .chat import encode_prompts, render_chat
from .directions import DirectionSet
from .generate import Decoding, Generation, generate_rows
from .io import append_jsonl, read_jsonl
from .models import model_fingerprint
from .score import degeneracy
from .steer import SteeringSpec

__all__ = [
    "PairConfig",
    "KeptInstruction",
    "PairsResult",
    "generate_pairs",
    "direction_set_id",
    "DEFAULT_GAMMA_POS",
    "DEFAULT_GAMMA_NEG",
]

log = logging.getLogger(__name__)

#: Defaults chosen by ``icon2-lens sweep`` on the embedded model (see the README).
DEFAULT_GAMMA_POS = 0.02
DEFAULT_GAMMA_NEG = -0.02


@dataclass(frozen=True, kw_only=True)
class PairConfig:
    """How pairs are made; every field is recorded in ``settings.json`` and in each record.

    Attributes:
        gamma_pos: γ⁺ for the chosen response (positive).
        gamma_neg: γ⁻ for the rejected response (negative).
        layers: Control interval: block indices steered for every criterion; ``None`` uses
            each criterion's own interval from ``intervals`` (given to :func:`generate_pairs`).
        unit: ``relative`` (γ in units of each layer's mean residual norm) or ``absolute``.
        positions: ``all`` (prompt and generated tokens) or ``generated``.
        decoding: Decoding settings (greedy, 128 new tokens).
        batch_size: Instructions per batch (twice as many rows).
        max_repetition: Repetition-rate above which a response counts as degenerate.
        backend: Generation backend (``auto``, ``fast``, ``bridge``); does not change results.
    """

    gamma_pos: float = DEFAULT_GAMMA_POS
    gamma_neg: float = DEFAULT_GAMMA_NEG
    layers: tuple[int, ...] | None = None
    unit: Literal["relative", "absolute"] = "relative"
    positions: Literal["all", "generated"] = "all"
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=128))
    batch_size: int = 8
    max_repetition: float = 0.5
    backend: Literal["auto", "fast", "bridge"] = "auto"

    def __post_init__(self) -> None:
        for name in ("gamma_pos", "gamma_neg"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def settings(self) -> dict[str, Any]:
        """The settings that change the pairs (the batch size and backend do not)."""
        out = asdict(self)
        out["decoding"] = self.decoding.to_dict()
        out["layers"] = list(self.layers) if self.layers is not None else None
        del out["batch_size"], out["backend"]
        return out


@dataclass(frozen=True)
class KeptInstruction:
    """An instruction selected for pair generation.

    Attributes:
        index: Stable id (its index in the scored pool); pairs and resume key on it.
        instruction: The text.
        criterion: The criterion to steer along (its argmax criterion).
        consistency: Its inherent-consistency score (NaN if unknown).
    """

    index: int
    instruction: str
    criterion: str
    consistency: float = float("nan")


@dataclass
class PairsResult:
    """What :func:`generate_pairs` produced (including pairs found already written).

    Attributes:
        records: Kept preference records, in instruction order.
        dropped: Dropped instructions with their reason and both responses.
        counts: Totals: instructions, pairs, dropped per reason, chosen/rejected degenerate.
    """

    records: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    counts: dict[str, Any]


def direction_set_id(ds: DirectionSet) -> str:
    """A short content hash of a direction set (criterion, site, method, layers and vectors)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([ds.criterion, ds.site, ds.method, list(ds.layers)]).encode())
    h.update(ds.vectors.to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _resolve_layers(
    config: PairConfig, sets: Mapping[str, DirectionSet], intervals: Mapping[str, Sequence[int]] | None
) -> dict[str, list[int]]:
    out = {}
    for name, ds in sets.items():
        if config.layers is not None:
            layers = list(config.layers)
        elif intervals and name in intervals:
            layers = list(intervals[name])
        else:
            raise ValueError(
                f"no control interval for {name!r}: set PairConfig.layers or pass intervals (the extraction's)"
            )
        bad = [layer for layer in layers if layer not in ds.layers]
        if bad or not layers:
            raise ValueError(
                f"control layers {bad or layers} are outside the {name!r} direction set "
                f"(layers {ds.layers[0]}..{ds.layers[-1]}); choose an interval inside the model"
            )
        out[name] = layers
    return out


def _settings_doc(model: LensModel, config: PairConfig, sets, layers, source: str = "icon2") -> dict[str, Any]:
    return {
        "format": "icon2-lens pairs v1",
        "source": source,
        "pair_config": config.settings(),
        "layers": layers,
        "direction_ids": {name: direction_set_id(ds) for name, ds in sets.items()},
        "site": {name: ds.site for name, ds in sets.items()},
        "model": getattr(model.cfg, "model_name", None),
        "model_fingerprint": model_fingerprint(model),
    }


def _check_resume(path: Path, want: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume onto ``path`` written with other settings (``defaults`` fill keys older files lack)."""
    if not path.is_file():
        return
    have = {**(defaults or {}), **json.loads(path.read_text(encoding="utf-8"))}
    if json.loads(json.dumps(want)) != have:
        diff = sorted(k for k in set(want) | set(have) if json.loads(json.dumps(want.get(k))) != have.get(k))
        raise ValueError(
            f"{path.parent} holds pairs written with different settings (differences in: {', '.join(diff)}); "
            "choose another output directory or delete it to start over"
        )


class _PairStore:
    """The pairs and drops of one run: read back from ``out`` (resuming) and appended to it batch by batch.

    Every instruction ends up in exactly one line of ``pairs.jsonl`` or ``dropped.jsonl``; the
    directory's ``settings.json`` must match ``settings`` (keys it lacks are taken from
    ``defaults``, and records read back get ``fill`` for keys they lack). Without ``out``
    everything stays in memory.
    """

    def __init__(
        self,
        out: str | Path | None,
        settings: dict[str, Any],
        ids: Sequence[int],
        *,
        defaults: Mapping[str, Any] | None = None,
        fill: Mapping[str, Any] | None = None,
    ) -> None:
        self.ids = list(ids)
        self.records: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.pairs_path: Path | None = None
        self.dropped_path: Path | None = None
        if out is not None:
            out_dir = Path(out)
            out_dir.mkdir(parents=True, exist_ok=True)
            _check_resume(out_dir / "settings.json", settings, defaults)
            (out_dir / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
            self.pairs_path, self.dropped_path = out_dir / "pairs.jsonl", out_dir / "dropped.jsonl"
            self.records = read_jsonl(self.pairs_path, repair=True)
            self.dropped = read_jsonl(self.dropped_path, repair=True)
            for rec in self.records + self.dropped:
                for key, value in (fill or {}).items():
                    rec.setdefault(key, value)
        self.done = {r["icon2_index"] for r in self.records} | {r["icon2_index"] for r in self.dropped}
        unknown = self.done - set(self.ids)
        if unknown:
            raise ValueError(
                f"{out} holds pairs for instructions {sorted(unknown)[:5]} that are not in this run's list; "
                "use another output directory"
            )
        if self.done:
            log.info("resuming: %d of %d instructions already done", len(self.done), len(self.ids))

    def todo(self, kept: Sequence[KeptInstruction], batch_size: int) -> list[list[KeptInstruction]]:
        """Fixed slices of ``kept`` (so resuming does not change batches), without what is done."""
        batches = [list(kept[i : i + batch_size]) for i in range(0, len(kept), batch_size)]
        todo = [[k for k in b if k.index not in self.done] for b in batches]
        return [b for b in todo if b]

    def add(self, new_pairs: list[dict[str, Any]], new_drops: list[dict[str, Any]]) -> None:
        """Keep one batch's pairs and drops, appending them to the files first."""
        if self.pairs_path is not None:
            append_jsonl(self.dropped_path, new_drops)
            append_jsonl(self.pairs_path, new_pairs)  # written last: a batch counts as done once its pairs are
        self.records.extend(new_pairs)
        self.dropped.extend(new_drops)

    def result(self) -> PairsResult:
        """Everything done so far, in instruction order, with :func:`pair_counts`."""
        order = {i: n for n, i in enumerate(self.ids)}
        self.records.sort(key=lambda r: order[r["icon2_index"]])
        self.dropped.sort(key=lambda r: order[r["icon2_index"]])
        return PairsResult(self.records, self.dropped, pair_counts(self.records, self.dropped, len(self.ids)))


def _check_kept(kept: Sequence[KeptInstruction]) -> list[int]:
    """The instruction indices of ``kept``, which must be non-empty and unique."""
    if not kept:
        raise ValueError("no instructions to make pairs from")
    ids = [k.index for k in kept]
    if len(set(ids)) != len(ids):
        raise ValueError("instruction indices must be unique")
    return ids


def _pair_verdict(c: Generation, r: Generation, max_repetition: float) -> tuple[str | None, str | None]:
    """``(drop reason or None, why the rejected response is degenerate or None)`` for one pair."""
    c_bad = degeneracy(c.text, c.token_ids, max_repetition=max_repetition)
    r_bad = degeneracy(r.text, r.token_ids, max_repetition=max_repetition)
    reason = None
    if c_bad:
        reason = f"chosen_{c_bad}"
    elif r_bad:
        reason = f"rejected_{r_bad}"
    elif c.text == r.text:
        reason = "identical"
    return reason, r_bad


def _sort_pair(item: KeptInstruction, c: Generation, r: Generation, prov: dict[str, Any], max_repetition: float,
               pairs: list[dict[str, Any]], drops: list[dict[str, Any]]) -> None:
    """Build the record of one chosen/rejected pair and append it to ``pairs`` or, with its drop
    reason, to ``drops``."""
    reason, r_bad = _pair_verdict(c, r, max_repetition)
    rec = _record(item, c.text, r.text, prov)
    if reason is None:
        pairs.append(rec)
    else:
        rec["icon2_drop_reason"] = reason
        rec["icon2_rejected_degenerate"] = r_bad
        drops.append(rec)


def _record(item: KeptInstruction, chosen: str, rejected: str, prov: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": item.instruction}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "icon2_index": item.index,
        "icon2_criterion": item.criterion,
        # JSON has no NaN: an unknown score is written as null
        "icon2_consistency": item.consistency if math.isfinite(item.consistency) else None,
        **prov,
    }


def generate_pairs(
    model: LensModel,
    kept: Sequence[KeptInstruction],
    direction_sets: Mapping[str, DirectionSet] | Sequence[DirectionSet],
    config: PairConfig | None = None,
    *,
    intervals: Mapping[str, Sequence[int]] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    source: str = "icon2",
) -> PairsResult:
    """Generate steered chosen/rejected pairs for ``kept`` instructions.

    Args:
        model: The bridge the directions were extracted from.
        kept: Instructions with their criterion (from the consistency filter).
        direction_sets: Criterion name -> its direction set (or a list of sets).
        config: Pair settings.
        intervals: Criterion -> control layers, used when ``config.layers`` is ``None``.
        out: Directory for ``pairs.jsonl``, ``dropped.jsonl`` and ``settings.json``; resumes
            what is already there.
        progress: Show a progress bar.
        limit: Stop after this many new batches (for tests of resuming).
        source: What made the pairs, recorded as ``icon2_source`` and in ``settings.json``
            (``icon2_unfiltered`` for :func:`icon2_lens.baselines.make_icon2_unfiltered_pairs`).
            A directory whose ``settings.json`` predates the field counts as ``icon2``.

    Returns:
        All pairs and drops in ``out`` (or made now), with counts.
    """
    config = config or PairConfig()
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string, got {source!r}")
    if isinstance(direction_sets, Mapping):
        sets = dict(direction_sets)
    else:
        sets = {ds.criterion: ds for ds in direction_sets}
    ids = _check_kept(kept)
    missing = sorted({k.criterion for k in kept} - set(sets))
    if missing:
        raise ValueError(f"no direction set for criteria {missing}; extract them first")
    for ds in sets.values():
        if ds.d_model != model.cfg.d_model or max(ds.layers) >= model.cfg.n_layers:
            raise ValueError(
                f"the {ds.criterion!r} directions do not fit this model (width {ds.d_model}, layers up to "
                f"{max(ds.layers)}; model d_model {model.cfg.d_model}, {model.cfg.n_layers} layers): "
                "they come from another model"
            )
    layers = _resolve_layers(config, sets, intervals)
    settings = _settings_doc(model, config, sets, layers, source)
    # files from before the source field are Icon² pairs
    store = _PairStore(out, settings, ids, defaults={"source": "icon2"}, fill={"icon2_source": "icon2"})

    n_ctx = getattr(model.cfg, "n_ctx", None)
    todo = store.todo(kept, config.batch_size)
    prov_common = {
        "icon2_source": source,
        "icon2_gamma_pos": config.gamma_pos,
        "icon2_gamma_neg": config.gamma_neg,
        "icon2_unit": config.unit,
        "icon2_positions": config.positions,
        "icon2_max_new_tokens": config.decoding.max_new_tokens,
        "icon2_do_sample": config.decoding.do_sample,
        "icon2_seed": config.decoding.seed,
        "icon2_model": settings["model"],
        "icon2_model_fingerprint": settings["model_fingerprint"],
    }
    for n_batch, batch in enumerate(tqdm(todo, desc="pairs", unit="batch", disable=not progress)):
        if limit is not None and n_batch >= limit:
            break
        prompts = [render_chat(model.tokenizer, k.instruction) for k in batch]
        rows = encode_prompts(model.tokenizer, prompts, max_len=n_ctx)
        k = len(batch)
        specs = []
        for name in sorted({item.criterion for item in batch}):
            gammas = [config.gamma_pos if item.criterion == name else 0.0 for item in batch]
            gammas += [config.gamma_neg if item.criterion == name else 0.0 for item in batch]
            specs.append(
                SteeringSpec(directions=sets[name], gamma=gammas, layers=layers[name], unit=config.unit,
                             positions=config.positions, prompt_len=1)
            )
        # chosen and rejected share a seed: with sampling, the only difference between them is γ
        seeds = [item.index for item in batch] * 2
        gens = generate_rows(model, rows + rows, config.decoding, steering=specs, row_seeds=seeds,
                             backend=config.backend)
        new_pairs, new_drops = [], []
        for j, item in enumerate(batch):
            c, r = gens[j], gens[k + j]
            ds = sets[item.criterion]
            prov = {
                **prov_common,
                "icon2_layers": layers[item.criterion],
                "icon2_site": ds.site,
                "icon2_direction_id": settings["direction_ids"][item.criterion],
                "icon2_chosen_finished": c.finished,
                "icon2_rejected_finished": r.finished,
            }
            _sort_pair(item, c, r, prov, config.max_repetition, new_pairs, new_drops)
        store.add(new_pairs, new_drops)
    return store.result()


def pair_counts(records: Sequence[Mapping], dropped: Sequence[Mapping], n_instructions: int) -> dict[str, Any]:
    """Totals over a pairs run: kept pairs, drops per reason, and degenerate rates before dropping."""
    reasons = Counter(d["icon2_drop_reason"] for d in dropped)
    n_done = len(records) + len(dropped)
    chosen_bad = sum(1 for d in dropped if d["icon2_drop_reason"].startswith("chosen_"))
    rejected_bad = sum(
        1 for d in dropped if d["icon2_drop_reason"].startswith("rejected_") or d.get("icon2_rejected_degenerate")
    )
    return {
        "instructions": n_instructions,
        "done": n_done,
        "pairs": len(records),
        "dropped": dict(sorted(reasons.items())),
        "chosen_degenerate_rate": chosen_bad / n_done if n_done else float("nan"),
        "rejected_degenerate_rate": rejected_bad / n_done if n_done else float("nan"),
    }
