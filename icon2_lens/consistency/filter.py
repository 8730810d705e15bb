"""The filter stage: score instructions, keep the most consistent ones, write what was kept and why.

Files written into the stage's folder (``filter.json`` last, marking the stage finished):

``scores.jsonl``
    Every instruction: its score per criterion, consistency (the max), argmax criterion, kept.
``kept.jsonl``
    The kept instructions, best first: ``index``, ``instruction``, ``criterion``, ``consistency``.
``examples.md``
    The five most and least consistent instructions.
``consistency.html`` / ``.png``
    Score distributions per criterion, kept vs the rest.
``filter.json``
    The scoring settings, a summary (counts per argmax criterion, score quantiles) and the
    inputs (model fingerprint, instructions, direction sets, settings) a reuse must match.

Example:
    >>> FilterConfig().fraction
    0.1
"""

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from icon2_lens._config import documented, option
from icon2_lens._files import (
    read_jsonl,
    read_marker,
    settings_differences,
    write_json,
    write_jsonl,
    write_text,
)
from icon2_lens._types import LensModel
from icon2_lens.directions.set import DirectionSet, direction_set_id
from icon2_lens.figures import write_figures_or_warn
from icon2_lens.model.load import model_fingerprint
from icon2_lens.pages import markdown_table

from .plot import plot_consistency
from .scores import score_consistency, score_summary

__all__ = [
    "KeptInstruction",
    "FilterConfig",
    "run_filter",
    "filter_inputs",
    "read_kept",
    "write_kept",
    "MARKER",
    "KEPT_FILE",
]

MARKER = "filter.json"
KEPT_FILE = "kept.jsonl"


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


@documented
@dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """How instructions are scored by inherent consistency and which are kept."""

    scoring: Literal["dot", "cosine", "zscore"] = option(
        "dot",
        help="dot: Icon² Eq. 2-3; cosine: divided by the residual norm; zscore: per criterion and layer",
    )
    layers: Literal["all", "control"] = option(
        "all", help="average over all layers (Icon²) or over each criterion's control interval"
    )
    fraction: float = option(
        0.1, exclusive="keep", help="keep this top fraction (Icon² keeps ≈ 10 %)"
    )
    threshold: float | None = option(
        None,
        exclusive="keep",
        help="keep every instruction scoring at least this, instead of fraction",
    )
    balance: Literal["none", "quota"] = option(
        "none",
        help="none: each kept instruction is steered along its argmax criterion (Icon²); quota: "
        "the criteria take turns picking their best instruction, an equal share each "
        "(scoring=zscore is the other way to keep one criterion from taking most)",
    )
    wrap: Literal["chat", "raw"] = option(
        "chat", help="instruction as scored: in the chat template, or the bare text"
    )
    batch_size: int = option(16, help="prompts per forward pass")
    backend: Literal["fast", "bridge"] = option(
        "fast", help="how residuals are read; equal up to float rounding"
    )

    def __post_init__(self) -> None:
        if self.threshold is None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.threshold is not None and self.balance != "none":
            raise ValueError("balance='quota' keeps a fraction; set fraction, not threshold")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def write_kept(kept: Sequence[KeptInstruction], path: str | Path) -> None:
    """Write kept instructions as JSONL (``index``, ``instruction``, ``criterion``, ``consistency``)."""
    write_jsonl(
        path,
        [
            {
                "index": k.index,
                "instruction": k.instruction,
                "criterion": k.criterion,
                "consistency": k.consistency,
            }
            for k in kept
        ],
    )


def read_kept(path: str | Path) -> list[KeptInstruction]:
    """Kept instructions from a ``kept.jsonl`` file.

    Raises:
        ValueError: The file is missing or empty, or a line lacks a field (with its line number).
    """
    rows = read_jsonl(Path(path))
    if not rows:
        raise ValueError(
            f"{path} holds no kept instructions (or does not exist); pass the kept.jsonl that "
            "'icon2-lens filter' wrote"
        )
    out = []
    for n, r in enumerate(rows, start=1):
        try:
            consistency = r.get("consistency")
            out.append(
                KeptInstruction(
                    int(r["index"]),
                    str(r["instruction"]),
                    str(r["criterion"]),
                    float("nan") if consistency is None else float(consistency),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}:{n}: expected 'index', 'instruction' and 'criterion' ({e}); fix that line"
            ) from e
        if not out[-1].instruction.strip():
            raise ValueError(f"{path}:{n}: the instruction is empty; drop that line or fill it")
    indices = [k.index for k in out]
    if len(set(indices)) != len(indices):
        raise ValueError(
            f"{path} lists index {next(i for i in indices if indices.count(i) > 1)} twice; pairs "
            "and resume key on it, so give every instruction its own index"
        )
    return out


def filter_inputs(
    model: LensModel,
    instructions: Sequence[str],
    direction_sets: Mapping[str, DirectionSet],
    intervals: Mapping[str, Sequence[int]] | None,
    config: FilterConfig,
) -> dict[str, Any]:
    """What decides a filter result, recorded in ``filter.json`` and compared before it is reused.

    The model's weight fingerprint, a digest of the instructions, each direction set's content
    id, the control intervals and the settings (but the batch size and backend, which change
    the scores by float rounding only).
    """
    settings = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "backend")}
    text = json.dumps(list(instructions), ensure_ascii=False).encode("utf-8")
    return {
        "model_fingerprint": model_fingerprint(model),
        "instructions_sha256": hashlib.sha256(text).hexdigest()[:16],
        "direction_sets": {name: direction_set_id(ds) for name, ds in direction_sets.items()},
        "intervals": None
        if intervals is None
        else {name: [int(x) for x in layers] for name, layers in intervals.items()},
        "config": settings,
    }


def _check_inputs(out: Path, want: dict[str, Any], done: Mapping[str, Any]) -> None:
    """Refuse a finished filter folder made from other inputs (one written before they were
    recorded is reused as it is)."""
    have = done.get("inputs")
    if have is None:
        return
    diff = settings_differences(want, have)
    if diff:
        raise ValueError(
            f"{out} holds a filter result made from other inputs (differences in: "
            f"{', '.join(diff)}); choose another output directory or delete it"
        )


def run_filter(
    model: LensModel,
    instructions: Sequence[str],
    direction_sets: Mapping[str, DirectionSet],
    intervals: Mapping[str, Sequence[int]] | None,
    config: FilterConfig,
    out: str | Path,
    *,
    progress: bool = True,
    png: bool = True,
) -> list[KeptInstruction]:
    """Score ``instructions``, keep the best, write the files of the module docstring into ``out``.

    A folder whose ``filter.json`` exists is finished: its kept instructions are read back if
    it records the same inputs (:func:`filter_inputs`), else this raises a ``ValueError``.
    """
    out = Path(out)
    inputs = filter_inputs(model, instructions, direction_sets, intervals, config)
    done = read_marker(out / MARKER)
    if done is not None:
        _check_inputs(out, inputs, done)
        return read_kept(out / KEPT_FILE)
    scores = score_consistency(
        model,
        instructions,
        list(direction_sets.values()),
        scoring=config.scoring,
        layers=config.layers,
        control_layers=intervals,
        wrap=config.wrap,
        batch_size=config.batch_size,
        progress=progress,
        backend=config.backend,
    )
    sel = scores.select(
        fraction=config.fraction, threshold=config.threshold, balance=config.balance
    )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "scores.jsonl", scores.table(sel).to_dict(orient="records"))
    column = {c: j for j, c in enumerate(scores.criteria)}
    kept = [
        KeptInstruction(i, instructions[i], c, float(scores.scores[i, column[c]]))
        for i, c in zip(sel.kept, sel.criteria)
    ]
    write_kept(kept, out / KEPT_FILE)
    top, bottom = scores.examples(5)
    write_text(
        out / "examples.md",
        "### Most consistent\n\n"
        + markdown_table(top)
        + "\n\n### Least consistent\n\n"
        + markdown_table(bottom)
        + "\n",
    )
    write_figures_or_warn({"consistency": plot_consistency(scores, sel)}, out, png=png)
    write_json(
        {"settings": scores.settings, "summary": score_summary(scores, sel), "inputs": inputs},
        out / MARKER,
    )
    return kept
