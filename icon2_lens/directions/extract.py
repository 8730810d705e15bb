"""Direction extraction end to end: contrastive prompts → activations → directions → diagnostics.

For each criterion and instruction ``d``, the model reads two chats that differ only in the system
prompt (positive / negative), each ending with the assistant's generation prompt; the residual
stream at the last token is cached at every chosen layer. Directions are fitted on the training
instructions and judged on held-out ones.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.directions.criteria import get_criteria
    >>> model = tiny_model()
    >>> cfg = ExtractConfig(method="mean_diff", n_instructions=8, n_heldout=4)
    >>> res = extract_criterion(model, get_criteria(["honesty"])[0], config=cfg, progress=False)
    >>> res.directions.vectors.shape
    torch.Size([3, 16])
"""

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from icon2_lens._config import documented, option
from icon2_lens._files import settings_differences
from icon2_lens._types import SITES, LensModel
from icon2_lens.instructions.builtin import load_instructions
from icon2_lens.model.hooks import check_site, normalize_layers
from icon2_lens.model.load import model_fingerprint, package_versions

from .confounds import CONFOUNDS, check_confounds, fit_confounds
from .contrast import answer_contrast_activations, contrast_activations
from .criteria import BUILTIN_CRITERIA, Criterion, get_criteria
from .diagnostics import layer_table, recommend_interval
from .fit import METHODS, direction_stats, fit_directions
from .folder import is_finished, read_criterion, write_criterion, write_outputs
from .orthogonal import orthogonalize
from .results import ContrastActivations, CriterionResult, ExtractionResult
from .set import DirectionSet, load_direction_set
from .wording import (
    WORDING_THRESHOLD,
    Wording,
    builtin_wordings,
    load_wordings_file,
    wording_accuracy,
    wording_activations,
    wording_summary,
)

__all__ = [
    "ExtractConfig",
    "ContrastActivations",
    "CriterionResult",
    "ExtractionResult",
    "contrast_activations",
    "extract_criterion",
    "run_extraction",
    "criterion_wordings",
]

logger = logging.getLogger(__name__)


@documented
@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """Settings of a direction extraction (all but ``criteria`` are recorded in every ``cfg.json``).

    ``backend`` reads residuals with ``fast`` (the SDPA twin sharing the bridge's weights, each
    system prompt's keys and values computed once for all instructions; ``resid_mid`` falls back to
    the bridge) or ``bridge`` (the bridge's own hook points). They agree up to float rounding; like
    the batch size, the backend does not block reusing a finished criterion.
    """

    criteria: tuple[str, ...] = option(
        tuple(BUILTIN_CRITERIA),
        help="built-in criteria to extract, comma-separated "
        "(ignored when criteria are passed explicitly, e.g. from --criteria-file)",
    )
    method: str = option(
        "pca_symmetric",
        choices=METHODS,
        help="pca: centred PCA (Icon²'s literal PCA); pca_symmetric: uncentred SVD "
        "of [Δ;−Δ]; mean_diff: the normalised mean contrast",
    )
    center: bool = option(
        True, help="centre the contrasts before PCA (method pca only; off: uncentred PCA)"
    )
    site: str = option("resid_post", choices=SITES, help="residual site read")
    layers: tuple[int, ...] | None = option(
        None, layers="all", help="layers to extract (negatives count from the end)"
    )
    n_instructions: int = option(
        256, help="training instructions (the first n of a seeded sample, in their order)"
    )
    n_heldout: int = option(96, help="held-out instructions for the diagnostics")
    batch_size: int = option(16, help="prompts per forward pass")
    seed: int = option(0, help="seed of the instruction sample")
    backend: str = option(
        "fast",
        choices=("fast", "bridge"),
        help="how residuals are read: fast (the SDPA twin, each system prompt computed once) or bridge (its hook "
        "points); equal up to float rounding",
    )
    orthogonalize: tuple[str, ...] = option(
        (),
        help="confound directions to project out of every direction, comma-separated "
        f"({', '.join(CONFOUNDS)}); recorded in cfg.json",
    )
    wording_check: bool = option(
        True,
        help="score each direction on other wordings of its prompts (shipped for the built-in "
        "criteria, more with wordings_file) and keep the recommended interval off layers that fail",
    )
    wording_threshold: float = option(
        WORDING_THRESHOLD,
        help="paired accuracy under another wording below which a layer is flagged",
    )
    n_wording: int = option(48, help="held-out instructions read under each wording")
    wordings_file: str | None = option(
        None, help="TOML/JSON file of more wordings ([[wordings.<criterion>]] positive, negative)"
    )
    reading: Literal["prompt", "answers"] = option(
        "prompt",
        help="prompt: the residual at the prompt's last token under each system prompt (Icon²); "
        "answers: the mean residual over the answers the model writes under each system prompt, "
        "read without it (where the behaviour is, not the prompt's wording)",
    )
    answer_tokens: int = option(48, help="answers reading: tokens generated per answer")

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if not self.criteria:
            raise ValueError("name at least one criterion")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        check_site(self.site)
        if self.backend not in ("fast", "bridge"):
            raise ValueError(f"unknown backend {self.backend!r}; use 'fast' or 'bridge'")
        if self.n_instructions < 1 or self.n_heldout < 1:
            raise ValueError("n_instructions and n_heldout must be at least 1")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "orthogonalize", check_confounds(list(self.orthogonalize)))
        if not 0.0 < self.wording_threshold <= 1.0:
            raise ValueError(f"wording_threshold must be in (0, 1], got {self.wording_threshold}")
        if self.n_wording < 1:
            raise ValueError("n_wording must be at least 1")
        if self.reading not in ("prompt", "answers"):
            raise ValueError(f"unknown reading {self.reading!r}; use 'prompt' or 'answers'")
        if self.answer_tokens < 1:
            raise ValueError("answer_tokens must be at least 1")

    @property
    def centering(self) -> str:
        return "mean" if (self.method == "pca" and self.center) else "none"


def _digest(items: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(items), ensure_ascii=False).encode()).hexdigest()[:16]


def _select_instructions(
    config: ExtractConfig, train: Sequence[str] | None, heldout: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    train = list(train) if train is not None else load_instructions("train")
    heldout = list(heldout) if heldout is not None else load_instructions("heldout")
    if not train:
        raise ValueError("the training instruction list is empty: pass at least one instruction")
    if not heldout:
        raise ValueError("the held-out instruction list is empty: pass at least one instruction")

    def sample(items: list[str], n: int, salt: int) -> list[str]:
        if n > len(items):
            logger.warning(
                "asked for %d instructions but only %d are available; using all %d",
                n,
                len(items),
                len(items),
            )
        if n >= len(items):
            return items
        keep = sorted(random.Random(config.seed * 1_000_003 + salt).sample(range(len(items)), n))
        return [items[i] for i in keep]

    return sample(train, config.n_instructions, 0), sample(heldout, config.n_heldout, 1)


def criterion_wordings(name: str, config: ExtractConfig) -> tuple[Wording, ...]:
    """The wordings the check uses for one criterion: the shipped ones, then the file's."""
    extra = load_wordings_file(config.wordings_file).get(name, ()) if config.wordings_file else ()
    return tuple(builtin_wordings(name)) + tuple(extra)


def extract_criterion(
    model: LensModel,
    criterion: Criterion,
    *,
    config: ExtractConfig | None = None,
    train: Sequence[str] | None = None,
    heldout: Sequence[str] | None = None,
    progress: bool = True,
) -> CriterionResult:
    """Fit one criterion's directions at every chosen layer and diagnose them on held-out data.

    Args:
        model: The model (a ``TransformerBridge`` with a chat template).
        criterion: Positive/negative system prompts.
        config: Extraction settings (defaults: :class:`ExtractConfig`).
        train: Training instructions (default: the built-in train split).
        heldout: Held-out instructions (default: the built-in held-out split).
        progress: Show progress bars.
    """
    config = config or ExtractConfig()
    train_i, held_i = _select_instructions(config, train, heldout)
    layers = normalize_layers(config.layers, model.cfg.n_layers)
    kw = dict(
        layers=layers,
        site=config.site,
        batch_size=config.batch_size,
        progress=progress,
        backend=config.backend,
    )
    if config.reading == "answers":
        read = partial(answer_contrast_activations, max_new_tokens=config.answer_tokens)
    else:
        read = contrast_activations
    pos, neg = read(model, criterion, train_i, **kw)
    pos_h, neg_h = read(model, criterion, held_i, **kw)
    vectors, stats = fit_directions(pos, neg, config.method, center=config.center)
    meta = {
        **_settings(model, criterion, config, train_i, held_i),
        "model_name": getattr(model.cfg, "model_name", type(model).__name__),
        "n_layers": int(model.cfg.n_layers),
        "centering": config.centering,
        "read_position": "last token of the chat prompt (after the assistant generation prompt)"
        if config.reading == "prompt"
        else f"mean over the tokens of the greedy answer ({config.answer_tokens} tokens at most) "
        "written under each system prompt, read with the instruction alone",
        "prompt_format": "criterion prompt as system message, instruction as user turn, chat template applied",
        "n_prompts": len(train_i),
        "n_heldout": len(held_i),
        "seed": config.seed,
        "versions": package_versions(),
    }
    ds = DirectionSet(
        criterion=criterion.name,
        layers=tuple(layers),
        vectors=vectors,
        site=config.site,
        method=config.method,
        stats=tuple(stats),
        meta=meta,
    )
    if config.orthogonalize:
        confounds = fit_confounds(
            model,
            config.orthogonalize,
            layers=layers,
            site=config.site,
            batch_size=config.batch_size,
        )
        ds = orthogonalize(ds, confounds)
        ds = replace(
            ds,
            stats=tuple(direction_stats(pos, neg, ds.vectors, config.method, center=config.center)),
        )
    table = layer_table(ds, pos, neg, pos_h, neg_h)
    wording, avoid = None, ()
    wordings = criterion_wordings(criterion.name, config)
    if config.wording_check and wordings:
        contrasts = wording_activations(
            model,
            criterion.name,
            wordings,
            held_i[: config.n_wording],
            layers=layers,
            site=config.site,
            batch_size=config.batch_size,
            backend=config.backend,
            progress=progress,
        )
        wording = wording_accuracy(ds, contrasts)
        flags = wording_summary(wording, config.wording_threshold)
        table = table.merge(flags, on="layer", how="left")
        avoid = [int(x) for x in flags.loc[flags["wording_flag"], "layer"]]
    interval = recommend_interval(table, model.cfg.n_layers, avoid=avoid)
    return CriterionResult(
        ds, table, interval, ContrastActivations(pos, neg, pos_h, neg_h), wording=wording
    )


_ANSWER_KEYS = ("reading", "answer_tokens")

_SETTINGS_KEYS = (
    "model_fingerprint",
    "extract_config",
    "instructions_sha256",
    "heldout_sha256",
    "criterion_prompts",
    "wordings",
)


def _settings(
    model, criterion: Criterion, config: ExtractConfig, train_i: list[str], held_i: list[str]
) -> dict[str, Any]:
    """The recorded settings that decide whether a finished criterion can be reused."""
    return {
        "model_fingerprint": model_fingerprint(model),
        # which other criteria a run extracts does not change this one's directions
        "extract_config": {
            **{
                k: v
                for k, v in asdict(config).items()
                # recorded only when used, so extractions made before the option stay reusable
                if k != "criteria" and not (config.reading == "prompt" and k in _ANSWER_KEYS)
            },
            "layers": normalize_layers(config.layers, model.cfg.n_layers),
        },
        "instructions_sha256": _digest(train_i),
        "heldout_sha256": _digest(held_i),
        "criterion_prompts": criterion.to_dict(),
        "wordings": [asdict(w) for w in criterion_wordings(criterion.name, config)]
        if config.wording_check
        else [],
    }


def run_extraction(
    model: LensModel,
    criteria: Sequence[Criterion] | None = None,
    *,
    config: ExtractConfig | None = None,
    out: str | Path | None = None,
    train: Sequence[str] | None = None,
    heldout: Sequence[str] | None = None,
    figures: bool = True,
    png: bool = True,
    progress: bool = True,
) -> ExtractionResult:
    """Extract every criterion; with ``out``, write results as each criterion finishes.

    Layout of ``out``: ``<criterion>/directions.safetensors``, ``<criterion>/cfg.json``,
    ``<criterion>/diagnostics.json``, ``diagnostics.json`` (all criteria) and ``figures/``
    (HTML + PNG). A criterion already finished in ``out`` with the same settings is loaded, not
    recomputed, so an interrupted run resumes where it stopped; different settings raise.

    ``criteria`` default to the built-in ones named in ``config.criteria``; passed explicitly
    (e.g. from a criteria file), their names replace ``config.criteria`` in what is recorded.
    """
    config = config or ExtractConfig()
    if criteria is None:
        criteria = get_criteria(config.criteria)
    if not criteria:
        raise ValueError("no criteria given")
    names = [c.name for c in criteria]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate criterion names: {names}")
    config = replace(config, criteria=tuple(names))
    result = ExtractionResult(config=config)
    out_dir = Path(out) if out is not None else None
    for criterion in criteria:
        done = out_dir / criterion.name if out_dir is not None else None
        if done is not None and is_finished(done):
            result.results[criterion.name] = _load_finished(
                model, criterion, done, config, train, heldout
            )
            logger.info("%s: already extracted in %s, reusing", criterion.name, done)
            continue
        res = extract_criterion(
            model, criterion, config=config, train=train, heldout=heldout, progress=progress
        )
        result.results[criterion.name] = res
        if done is not None:
            write_criterion(res, done, figures=figures, png=png)
    if out_dir is not None:
        write_outputs(result, out_dir, figures=figures, png=png)
    return result


def _comparable(extract_config: dict[str, Any]) -> dict[str, Any]:
    """Settings that change the results (the batch size and backend do not, beyond float rounding)."""
    return {k: v for k, v in extract_config.items() if k not in ("batch_size", "backend")}


def _load_finished(model, criterion, done: Path, config, train, heldout) -> CriterionResult:
    try:
        ds = load_direction_set(done, model=model)
    except ValueError as e:
        raise ValueError(
            f"{done} holds '{criterion.name}' directions that do not fit this run ({e}); "
            "choose another output directory or delete that folder"
        ) from e
    train_i, held_i = _select_instructions(config, train, heldout)
    want = _settings(model, criterion, config, train_i, held_i)
    have = {k: ds.meta.get(k) for k in _SETTINGS_KEYS}
    want["extract_config"] = _comparable(want["extract_config"])
    have["extract_config"] = _comparable(dict(have["extract_config"] or {}))
    diff = settings_differences(want, have)
    if diff:
        raise ValueError(
            f"{done} already holds '{criterion.name}' directions extracted with different settings "
            f"(differences in: {', '.join(diff)}); choose another output directory or delete that folder"
        )
    return read_criterion(ds, done)
