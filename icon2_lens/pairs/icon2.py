"""Bidirectional inherent control: one chosen (+γ⁺) and one rejected (γ⁻) response per instruction.

For each kept instruction the model answers twice with its residual stream pushed along the
instruction's argmax criterion direction ``u_l`` at every layer ``l`` of the control interval:
``h_l ← h_l + γ⁺·s_l·u_l`` for the chosen answer, ``γ⁻`` (negative) for the rejected one, where
``s_l`` is the layer's mean residual norm when ``unit="relative"`` (see :mod:`icon2_lens.directions.steer`).
Chosen and rejected rows of several instructions — possibly of different criteria — run in one
batch: each criterion gets one steering spec whose per-row γ is γ⁺ on its chosen rows, γ⁻ on its
rejected rows and exactly 0 elsewhere.

With ``shared_prefix = P`` the rejected answer is not started from the prompt: it
repeats the chosen answer's first ``min(P, max_new_tokens // 2, len(chosen) // 2)`` tokens and
continues from there at γ⁻ (with ``positions="generated"``, steering starts at the last shared
token). Both answers then open alike, so an opener (an apology, a greeting) cannot tell them
apart; what DPO can learn from is the continuation. The tokens shared are recorded as
``icon2_shared_prefix``. (``icon2-lens sweep`` judges answers started at the prompt.)

With ``gamma_neg_spread = s`` each instruction's rejected answer gets its own
``γ⁻ᵢ = γ⁻ · (1 + s · (2uᵢ − 1))``, ``uᵢ`` uniform from ``(seed, instruction index)``: the pairs
range from nearly alike (mild γ⁻ᵢ) to far apart, instead of all differing by one push of the same
size. With ``mirror_share = m`` a seeded share ``m`` of the instructions gets the mirrored pair,
the γ pair reflected about 0: ``(γ⁺, γ⁻ᵢ) → (−γ⁻ᵢ, −γ⁺)``. For one-sided pairs (γ⁺ = 0) that is
chosen pushed along the criterion at ``|γ⁻ᵢ|`` against the unsteered answer, so the model's own
greedy answer is chosen in only part of the pairs and DPO cannot tell chosen from rejected by
the model's likelihood alone (docs/results.md); symmetric two-sided pairs are their own mirror.
The γ values used are recorded per pair as ``icon2_gamma_pos`` and ``icon2_gamma_neg``.

Records follow TRL's conversational preference format with an explicit prompt, plus flat
``icon2_*`` provenance columns::

    {"prompt": [{"role": "user", "content": ...}],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "icon2_index": 17, "icon2_criterion": "helpfulness", "icon2_source": "icon2",
     "icon2_gamma_pos": 0.04, ...}

``icon2_source`` names what made the pair (``icon2`` here; :mod:`icon2_lens.pairs.baselines` writes the
same format for its baselines), so pairs of different origins can be trained and evaluated alike.

Writing is incremental (one fsync'd append per batch) and resumable: every instruction ends up in
exactly one line of ``pairs.jsonl`` or ``dropped.jsonl``; a re-run skips the instructions already
there, and refuses to continue a file written with different settings (``settings.json``).
Batches are fixed slices of the instruction list and every row samples from its own seeded
generator, so a resumed run writes the same pairs as an uninterrupted one. Under a multi-process
launch the batches are shared out between the processes and merged back byte-identically
(:class:`~icon2_lens.pairs.store.PairStore`, docs/scaling.md).
"""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from icon2_lens._config import documented, option
from icon2_lens._types import LensModel
from icon2_lens.directions.confounds import CONFOUNDS, check_confounds, fit_confounds
from icon2_lens.directions.orthogonal import orthogonalize
from icon2_lens.directions.set import DirectionSet, check_compatible, direction_set_id
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import Decoding, Generation, generate_rows
from icon2_lens.model.load import model_fingerprint

from .records import KeptInstruction, PairsResult, sort_pair
from .store import PairStore, check_kept

__all__ = [
    "PairConfig",
    "generate_pairs",
    "DEFAULT_GAMMA_POS",
    "DEFAULT_GAMMA_NEG",
    "DEFAULT_LAYERS",
    "DEFAULT_MIRROR_SHARE",
    "orthogonalize_sets",
    "check_gamma_signs",
    "MAX_RELATIVE_GAMMA",
]

log = logging.getLogger(__name__)

#: Defaults measured on the embedded model (see docs/results.md): one-sided pairs (the chosen
#: answer is the unsteered one, γ⁺ = 0) against the rejected answer at γ⁻ = −0.02, on the layers the
#: sweep chose. They gave the only DPO model an independent judge prefers to the base (two-sided
#: pairs at γ⁺ = +0.02 did not); re-run the sweep and the comparison for another model.
DEFAULT_GAMMA_POS = 0.0
DEFAULT_GAMMA_NEG = -0.02
DEFAULT_LAYERS: tuple[int, ...] = tuple(range(13, 23))
#: Half the pairs mirrored: the model's own greedy answer is chosen in about half of them, rejected
#: in the other half, so DPO learns the direction rather than "prefer what I would have said"
#: (on SmolLM2 the saturation rule fired at step 5 of 42 without, at step 15 with; see
#: docs/results.md).
DEFAULT_MIRROR_SHARE = 0.5


@documented
@dataclass(frozen=True, kw_only=True)
class PairConfig:
    """How Icon² pairs are made; what changes the pairs is recorded in ``settings.json`` and each record."""

    gamma_pos: float = option(
        DEFAULT_GAMMA_POS,
        help="γ⁺ of the chosen answer: 0 = the unsteered answer (one-sided pairs, measured best "
        "on SmolLM2 by judges that read no direction), positive = pushed along the criterion",
    )
    gamma_neg: float = option(
        DEFAULT_GAMMA_NEG, help="γ⁻ of the rejected answer (negative; sweep-chosen on SmolLM2)"
    )
    layers: tuple[int, ...] | None = option(
        DEFAULT_LAYERS,
        layers="criterion",
        help="control interval steered for every criterion (sweep-chosen on SmolLM2); "
        "'criterion' = each criterion's recommended interval from the extraction",
    )
    unit: Literal["relative", "absolute"] = option(
        "relative",
        help="relative: γ × the layer's mean residual norm; absolute: γ × the unit vector",
    )
    positions: Literal["all", "generated"] = option(
        "all",
        help="steered positions: all (prompt and answer) or generated (from the last prompt token on)",
    )
    max_new_tokens: int = option(128, help="answer budget in tokens")
    shared_prefix: int = option(
        0,
        help="tokens of the chosen answer the rejected one starts with before it continues at γ⁻ "
        "(at most half of either budget), so that no opener tells them apart; 0 = both answers "
        "start at the prompt (on SmolLM2, 16 removed the surface cues, and the trained model's "
        "relevance win over the base fell from 0.63 to 0.58, no longer above 0.5: docs/results.md)",
    )
    gamma_neg_spread: float = option(
        0.0,
        help="spread of γ⁻ over the pairs, in [0, 1): each instruction's rejected answer is "
        "steered at γ⁻ × (1 + spread × (2u − 1)), u uniform from (seed, instruction index), so "
        "pairs range from nearly alike to far apart; 0 = every pair at γ⁻",
    )
    mirror_share: float = option(
        DEFAULT_MIRROR_SHARE,
        help="share of the instructions, in [0, 1], whose γ pair is mirrored (seeded draw): "
        "(γ⁺, γ⁻) → (−γ⁻, −γ⁺). With γ⁺ = 0 the mirrored pair is the answer pushed along the "
        "criterion at |γ⁻| against the unsteered one, so the model's own greedy answer is not "
        "always chosen and its likelihood stops giving chosen away (on SmolLM2 0.5 kept DPO's "
        "reward accuracy from saturating: docs/results.md); 0 = no mirrored pairs",
    )
    do_sample: bool = option(
        False, aliases=("--sample",), help="seeded sampling instead of greedy decoding"
    )
    temperature: float = option(1.0, help="sampling temperature (with do_sample)")
    top_p: float = option(1.0, help="nucleus mass (with do_sample)")
    seed: int = option(0, help="decoding seed (row i samples from (seed, instruction index))")
    batch_size: int = option(
        8, help="instructions per batch (twice as many rows); does not change the pairs"
    )
    max_repetition: float = option(
        0.5, help="repeated-4-gram rate above which an answer counts as degenerate"
    )
    backend: Literal["auto", "fast", "bridge"] = option(
        "auto",
        help="generation backend (auto: the SDPA twin when possible); does not change the pairs",
    )
    orthogonalize: tuple[str, ...] = option(
        (),
        help="confound directions to project out of the directions before steering, "
        f"comma-separated ({', '.join(CONFOUNDS)})",
    )
    surface_gate: bool = option(
        True,
        help="train on train.jsonl: the pairs without those through which one surface cue "
        "(length, apology opener, opening words, …) gives chosen away (icon2_lens.pairs.gate)",
    )
    max_cue: float = option(
        0.7, help="surface gate: cue strength (AUC) at which a feature counts as a shortcut"
    )
    max_gate_drop: float = option(
        0.5, help="surface gate: the largest share of the pairs it may leave out"
    )
    allow_any_gamma: bool = option(
        False,
        help="accept any γ pair (γ⁺ < 0, γ⁻ ≥ 0, relative |γ| > 1): for experiments on inverted "
        "or one-sign pairs; by default γ⁺ ≥ 0 > γ⁻ (γ⁺ = 0: the unsteered answer is chosen)",
    )

    def __post_init__(self) -> None:
        for name in ("gamma_pos", "gamma_neg"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        spread = self.gamma_neg_spread
        if not isinstance(spread, (int, float)) or not 0 <= spread < 1:
            raise ValueError(
                f"gamma_neg_spread must be in [0, 1) (a share of γ⁻), got {spread!r}; "
                "0.75 draws γ⁻ between a quarter and 1.75 times its value"
            )
        mirror = self.mirror_share
        if not isinstance(mirror, (int, float)) or not 0 <= mirror <= 1:
            raise ValueError(
                f"mirror_share must be in [0, 1] (a share of the pairs), got {mirror!r}"
            )
        if not self.allow_any_gamma:  # the strongest γ⁻ the spread can draw must pass too
            check_gamma_signs(self.gamma_pos, self.gamma_neg * (1 + spread), self.unit)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.shared_prefix < 0:
            raise ValueError(f"shared_prefix must be >= 0, got {self.shared_prefix}")
        if not 0.5 < self.max_cue <= 1:
            raise ValueError(f"max_cue must be in (0.5, 1], got {self.max_cue}")
        if not 0 <= self.max_gate_drop < 1:
            raise ValueError(f"max_gate_drop must be in [0, 1), got {self.max_gate_drop}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "orthogonalize", check_confounds(list(self.orthogonalize)))
        self.decoding  # noqa: B018 - validates the decoding fields

    @property
    def decoding(self) -> Decoding:
        """The decoding of both answers (chosen and rejected share each instruction's seed)."""
        return Decoding(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
        )

    def settings(self) -> dict[str, Any]:
        """The settings that change the pairs (the batch size and backend do not)."""
        return {
            "gamma_pos": self.gamma_pos,
            "gamma_neg": self.gamma_neg,
            "layers": list(self.layers) if self.layers is not None else None,
            "unit": self.unit,
            "positions": self.positions,
            "decoding": self.decoding.to_dict(),
            "max_repetition": self.max_repetition,
            # recorded only when used, so pairs made before the option keep their settings
            **({"orthogonalize": list(self.orthogonalize)} if self.orthogonalize else {}),
            **({"shared_prefix": self.shared_prefix} if self.shared_prefix else {}),
            **({"gamma_neg_spread": self.gamma_neg_spread} if self.gamma_neg_spread else {}),
            **({"mirror_share": self.mirror_share} if self.mirror_share else {}),
            **({"allow_any_gamma": True} if self.allow_any_gamma else {}),
        }

    def gammas_of(self, index: int) -> tuple[float, float]:
        """``(γ of the chosen answer, γ of the rejected one)`` for the instruction at ``index``.

        Without spread or mirroring that is ``(gamma_pos, gamma_neg)``. ``gamma_neg_spread`` draws
        the instruction's own γ⁻ᵢ; a mirrored instruction (drawn with probability
        ``mirror_share``) gets the reflected pair ``(−γ⁻ᵢ, −γ⁺)``: for one-sided pairs, chosen
        pushed along the criterion and rejected unsteered. Draws come from ``(seed, index)``
        alone, so they do not depend on batching.

        Example:
            >>> c = PairConfig(gamma_neg=-0.02, gamma_neg_spread=0.5, mirror_share=0.0)
            >>> all(-0.03 <= c.gammas_of(i)[1] <= -0.01 for i in range(100))
            True
            >>> PairConfig(gamma_neg=-0.02, mirror_share=0.0).gammas_of(7)
            (0.0, -0.02)
            >>> m = PairConfig(gamma_neg=-0.02, mirror_share=0.5)
            >>> sorted({m.gammas_of(i) for i in range(50)})
            [(0.0, -0.02), (0.02, 0.0)]
            >>> sorted({replace(m, gamma_pos=0.1, gamma_neg=-0.05).gammas_of(i) for i in range(50)})
            [(0.05, -0.1), (0.1, -0.05)]
        """
        if not (self.gamma_neg_spread or self.mirror_share):
            return self.gamma_pos, self.gamma_neg
        u_spread, u_mirror = np.random.default_rng([self.seed, index, _GAMMA_DRAW_STREAM]).random(2)
        neg = float(self.gamma_neg * (1.0 + self.gamma_neg_spread * (2.0 * u_spread - 1.0)))
        if u_mirror < self.mirror_share:
            return -neg, 0.0 - self.gamma_pos  # 0.0 - x: no -0.0 in the records
        return self.gamma_pos, neg


#: Salt of the random stream that draws each instruction's γ⁻ and mirroring (apart from its
#: decoding stream).
_GAMMA_DRAW_STREAM = 0x5EED


#: The largest |γ| in relative units accepted without ``allow_any_gamma``: a push of one whole
#: mean residual norm already turns a small model's answers into noise.
MAX_RELATIVE_GAMMA = 1.0


def check_gamma_signs(gamma_pos: float, gamma_neg: float, unit: str = "relative") -> None:
    """Refuse a γ pair that would make inverted or meaningless pairs (see ``allow_any_gamma``).

    The chosen answer is pushed along the criterion (γ⁺ > 0) or left unsteered (γ⁺ = 0,
    one-sided pairs); the rejected one is pushed against it (γ⁻ < 0). A forgotten minus sign
    would otherwise write pairs that teach DPO the opposite of the criterion.

    Example:
        >>> check_gamma_signs(0.02, -0.02)
        >>> check_gamma_signs(0.02, 0.04)
        Traceback (most recent call last):
        ...
        ValueError: gamma_neg must be negative (the rejected answer is pushed against the criterion), got 0.04; pass a negative value such as -0.02, or allow_any_gamma (--allow-any-gamma) for pairs steered another way
    """
    tail = "or allow_any_gamma (--allow-any-gamma) for pairs steered another way"
    if not gamma_neg < 0:
        raise ValueError(
            "gamma_neg must be negative (the rejected answer is pushed against the criterion), "
            f"got {gamma_neg:g}; pass a negative value such as -0.02, {tail}"
        )
    if not gamma_pos >= 0:
        raise ValueError(
            "gamma_pos must be positive, or 0 for the unsteered answer (the chosen answer is "
            f"pushed along the criterion), got {gamma_pos:g}; pass a value such as 0.02, {tail}"
        )
    big = [g for g in (gamma_pos, gamma_neg) if abs(g) > MAX_RELATIVE_GAMMA]
    if unit == "relative" and big:
        raise ValueError(
            f"|γ| = {abs(big[0]):g} is more than {MAX_RELATIVE_GAMMA:g} mean residual norm "
            "(relative units): such answers are noise; use the sweep's range (|γ| ≈ 0.005-0.1), "
            "or --allow-any-gamma (allow_any_gamma) to try it anyway"
        )


def _resolve_layers(
    config: PairConfig,
    sets: Mapping[str, DirectionSet],
    intervals: Mapping[str, Sequence[int]] | None,
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


def orthogonalize_sets(
    model: LensModel, sets: Mapping[str, DirectionSet], confounds: Sequence[str]
) -> dict[str, DirectionSet]:
    """Every set with the named confound directions (fitted on ``model``) projected out."""
    out = {}
    for name, ds in sets.items():
        if "orthogonalized" in ds.meta:
            raise ValueError(
                f"the {name!r} directions are already orthogonalised against "
                f"{ds.meta['orthogonalized']['confounds']}; drop the pairs option or extract without it"
            )
        fitted = fit_confounds(model, confounds, layers=list(ds.layers), site=ds.site)
        out[name] = orthogonalize(ds, fitted)
    return out


def _settings_doc(
    model: LensModel, config: PairConfig, sets, layers, source: str = "icon2"
) -> dict[str, Any]:
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
        limit: Stop after this many new batches (for tests of resuming); per process under a
            multi-process launch.
        source: What made the pairs, recorded as ``icon2_source`` and in ``settings.json``
            (``icon2_unfiltered`` for :func:`icon2_lens.pairs.baselines.make_icon2_unfiltered_pairs`).
            A directory whose ``settings.json`` predates the field counts as ``icon2``.

    Returns:
        All pairs and drops in ``out`` (or made now), with counts.
    """
    config = config or PairConfig()
    if config.layers is not None:  # negative indices count from the end; recorded resolved
        n = model.cfg.n_layers
        config = replace(
            config, layers=tuple(sorted({x + n if -n <= x < 0 else x for x in config.layers}))
        )
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string, got {source!r}")
    if isinstance(direction_sets, Mapping):
        sets = dict(direction_sets)
    else:
        sets = {ds.criterion: ds for ds in direction_sets}
    ids = check_kept(kept)
    missing = sorted({k.criterion for k in kept} - set(sets))
    if missing:
        raise ValueError(f"no direction set for criteria {missing}; extract them first")
    for ds in sets.values():
        check_compatible(ds, model, check_fingerprint=False)
    if config.orthogonalize:
        sets = orthogonalize_sets(model, sets, config.orthogonalize)
    layers = _resolve_layers(config, sets, intervals)
    settings = _settings_doc(model, config, sets, layers, source)
    # files from before the source field are Icon² pairs
    store = PairStore(
        out, settings, ids, defaults={"source": "icon2"}, fill={"icon2_source": "icon2"}
    )

    n_ctx = getattr(model.cfg, "n_ctx", None)
    todo = store.todo(kept, config.batch_size)
    prov_common = {
        "icon2_source": source,
        "icon2_unit": config.unit,
        "icon2_positions": config.positions,
        "icon2_max_new_tokens": config.decoding.max_new_tokens,
        "icon2_do_sample": config.decoding.do_sample,
        "icon2_seed": config.decoding.seed,
        "icon2_model": settings["model"],
        "icon2_model_fingerprint": settings["model_fingerprint"],
    }
    for n_batch, batch in enumerate(
        tqdm(todo, desc="pairs", unit="batch", disable=not (progress and store.shard.main))
    ):
        if limit is not None and n_batch >= limit:
            break
        prompts = [render_chat(model.tokenizer, k.instruction) for k in batch]
        rows = encode_prompts(model.tokenizer, prompts, max_len=n_ctx)
        chosen, rejected, shared = _answer_batch(model, batch, rows, sets, layers, config)
        new_pairs, new_drops = [], []
        for j, item in enumerate(batch):
            c, r = chosen[j], rejected[j]
            ds = sets[item.criterion]
            prov = {
                **prov_common,
                "icon2_layers": layers[item.criterion],
                "icon2_site": ds.site,
                "icon2_direction_id": settings["direction_ids"][item.criterion],
                "icon2_chosen_finished": c.finished,
                "icon2_rejected_finished": r.finished,
                **({"icon2_shared_prefix": shared[j]} if config.shared_prefix else {}),
                **dict(zip(("icon2_gamma_pos", "icon2_gamma_neg"), config.gammas_of(item.index))),
            }
            sort_pair(item, c, r, prov, config.max_repetition, new_pairs, new_drops)
        store.add(new_pairs, new_drops)
    return store.result()


def _specs(indexed, sets, layers, config: PairConfig, gamma_of) -> list[SteeringSpec]:
    """One steering spec per criterion of the ``(row, item)`` pairs in ``indexed``; ``gamma_of(row,
    item)`` is the row's γ under its own criterion (it gets 0 under the others)."""
    specs = []
    for name in sorted({item.criterion for _, item in indexed}):
        gammas = [gamma_of(j, item) if item.criterion == name else 0.0 for j, item in indexed]
        specs.append(
            SteeringSpec(
                directions=sets[name],
                gamma=gammas,
                layers=layers[name],
                unit=config.unit,
                positions=config.positions,
                prompt_len=1,
            )
        )
    return specs


def _answer_batch(
    model: LensModel, batch, rows, sets, layers, config: PairConfig
) -> tuple[list[Generation], list[Generation], list[int]]:
    """Chosen and rejected answers of one batch, and how many tokens each pair shares.

    Without a shared prefix, chosen (γ⁺) and rejected (γ⁻) rows run as one batch. With
    ``config.shared_prefix``, the chosen answers come first; each rejected row is its prompt plus
    the chosen answer's first ``min(shared_prefix, max_new_tokens // 2, len(chosen) // 2)``
    tokens, continued at γ⁻ for ``max_new_tokens - min(shared_prefix, max_new_tokens // 2)``
    tokens at most (so the rejected answer never exceeds the budget). With sampling, the
    continuation goes on with the instruction's random stream past the shared tokens, so at γ⁻ = 0
    it is the chosen answer. Chosen and rejected share each instruction's seed.
    """
    k, seeds = len(batch), [item.index for item in batch]
    rows_of = list(enumerate(batch))
    if not config.shared_prefix:
        both = rows_of + [(j + k, item) for j, item in rows_of]
        specs = _specs(
            both,
            sets,
            layers,
            config,
            lambda j, item: config.gammas_of(item.index)[0 if j < k else 1],
        )
        gens = generate_rows(
            model,
            rows + rows,
            config.decoding,
            steering=specs,
            row_seeds=seeds * 2,
            backend=config.backend,
        )
        return gens[:k], gens[k:], [0] * k
    pos = _specs(rows_of, sets, layers, config, lambda _, item: config.gammas_of(item.index)[0])
    chosen = generate_rows(
        model, rows, config.decoding, steering=pos, row_seeds=seeds, backend=config.backend
    )
    most = min(config.shared_prefix, config.max_new_tokens // 2)
    shared = [min(most, len(c.token_ids) // 2) for c in chosen]
    prefixed = [list(row) + c.token_ids[:n] for row, c, n in zip(rows, chosen, shared)]
    budget = replace(config.decoding, max_new_tokens=config.max_new_tokens - most)
    neg = _specs(rows_of, sets, layers, config, lambda _, item: config.gammas_of(item.index)[1])
    tails = generate_rows(
        model,
        prefixed,
        budget,
        steering=neg,
        row_seeds=seeds,
        row_draws=shared,
        backend=config.backend,
    )
    rejected = [
        Generation.decoded(model.tokenizer, c.token_ids[:n] + t.token_ids, t.finished)
        for c, t, n in zip(chosen, tails, shared)
    ]
    return chosen, rejected, shared
