"""Systems that answer instructions: the base model, another model, AlignEZ, or steering.

A *system* is one of:

``base``
    The evaluated model as loaded (unsteered, untrained).
``model:PATH``
    Another model: a DPO-trained HF directory, a hub id or an embedded key.
``alignez:DIR[@STRENGTH]``
    The base model edited at inference time by an AlignEZ edit (:mod:`icon2_lens.alignez`).
``steer:DIR@GAMMA@LAYERS``
    The base model steered along each instruction's argmax-criterion direction of an extraction
    directory (``GAMMA`` in relative units, ``LAYERS`` such as ``13-22``).

Answers are greedy by default and written one JSONL file per system (a finished file is reused,
so an interrupted evaluation resumes system by system).

Example:
    >>> parse_system("alignez:runs/x/alignez@0.5")
    SystemSpec(name='alignez', kind='alignez', path='runs/x/alignez', strength=0.5, layers=None)
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icon2_lens._config import parse_layer_spec
from icon2_lens._files import read_jsonl, write_jsonl
from icon2_lens._types import LensModel
from icon2_lens.alignez.apply import generate_alignez
from icon2_lens.alignez.edit import load_alignez
from icon2_lens.consistency.scores import score_consistency
from icon2_lens.directions.folder import load_extraction
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.model.chat import render_chat
from icon2_lens.model.generate import Decoding, generate
from icon2_lens.model.hooks import parse_layers
from icon2_lens.model.load import load_model

__all__ = ["SystemSpec", "parse_system", "check_system", "answer_instructions", "SYSTEM_KINDS"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SystemSpec:
    """A system to evaluate (see the module docstring for the text forms)."""

    name: str
    kind: str
    path: str | None = None
    strength: float | None = None
    layers: str | None = None


def parse_system(text: str, name: str | None = None) -> SystemSpec:
    """Parse ``base``, ``model:PATH``, ``alignez:DIR[@S]`` or ``steer:DIR@GAMMA@LAYERS``.

    A bare path is read as ``model:PATH``.

    Raises:
        ValueError: An unknown kind or a malformed strength.
    """
    text = text.strip()
    if not text:
        raise ValueError(
            "empty system: use base, model:PATH, alignez:DIR[@STRENGTH] or steer:DIR@GAMMA@LAYERS"
        )
    if text == "base":
        return SystemSpec(name or "base", "base")
    kind, sep, rest = text.partition(":")
    if sep and kind.isalpha() and kind not in SYSTEM_KINDS:
        raise ValueError(
            f"unknown system kind {kind!r} in {text!r}; use base, model:PATH, "
            "alignez:DIR[@STRENGTH] or steer:DIR@GAMMA@LAYERS"
        )
    if not sep or kind not in SYSTEM_KINDS:
        return SystemSpec(name or Path(text).name or text, "model", text)
    if kind == "model":
        return SystemSpec(name or "model", "model", rest)
    parts = rest.split("@")
    try:
        strength = float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        raise ValueError(
            f"{text!r}: the value after '@' must be a number, got {parts[1]!r}; write e.g. "
            f"{kind}:DIR@0.02"
        ) from None
    if strength is not None and not math.isfinite(strength):
        raise ValueError(f"{text!r}: the strength must be finite; give a number such as 0.5")
    if kind == "alignez":
        return SystemSpec(name or "alignez", "alignez", parts[0], strength)
    if len(parts) != 3 or strength is None:
        raise ValueError(
            f"{text!r} is not a steering system; use steer:DIR@GAMMA@LAYERS, e.g. "
            "steer:runs/x/extract@0.02@13-22"
        )
    parse_layer_spec(parts[2])  # the text must read; the model's range is checked on use
    return SystemSpec(name or "steer", "steer", parts[0], strength, parts[2])


#: The kinds of system :func:`parse_system` reads (besides ``base`` and a bare model path).
SYSTEM_KINDS = ("model", "alignez", "steer")


def check_system(spec: SystemSpec) -> None:
    """Check what a system needs on disk before any answer is generated (for every system).

    Raises:
        ValueError: A steering or AlignEZ folder that does not exist, or a model path that
            looks local (it starts with ``.``, ``/`` or ``~``) and does not exist.
    """
    if spec.kind in ("steer", "alignez") and not Path(str(spec.path)).is_dir():
        made_by = "icon2-lens extract" if spec.kind == "steer" else "icon2-lens alignez"
        raise ValueError(
            f"system {spec.name!r}: {spec.path!r} is not a directory; pass the output folder of "
            f"'{made_by}'"
        )
    if spec.kind == "model" and str(spec.path).startswith((".", "/", "~")):
        if not Path(str(spec.path)).expanduser().is_dir():
            raise ValueError(
                f"system {spec.name!r}: model directory {spec.path!r} does not exist; check the path"
            )


def _generations(
    spec: SystemSpec,
    base: LensModel,
    instructions: Sequence[str],
    decoding,
    *,
    batch_size: int,
    progress: bool,
    criteria: Sequence[str] | None,
):
    prompts = [render_chat(base.tokenizer, d) for d in instructions]
    if spec.kind == "base":
        return generate(base, prompts, decoding, batch_size=batch_size, progress=progress)
    if spec.kind == "model":
        other = load_model(spec.path)
        try:
            return generate(
                other,
                [render_chat(other.tokenizer, d) for d in instructions],
                decoding,
                batch_size=batch_size,
                progress=progress,
            )
        finally:
            del other
    if spec.kind == "alignez":
        edit = load_alignez(spec.path, model=base)
        return generate_alignez(
            base,
            instructions,
            edit,
            decoding,
            strength=spec.strength,
            batch_size=batch_size,
            progress=progress,
        )
    if spec.kind == "steer":
        return _steered(
            spec,
            base,
            instructions,
            prompts,
            decoding,
            batch_size=batch_size,
            progress=progress,
            criteria=criteria,
        )
    raise ValueError(f"unknown system kind {spec.kind!r}")


def _steered(spec, base, instructions, prompts, decoding, *, batch_size, progress, criteria):
    sets, _ = load_extraction(spec.path, model=base)
    if criteria is None:
        criteria = score_consistency(
            base, list(instructions), list(sets.values()), progress=False
        ).best_criterion
    layers = tuple(parse_layers(spec.layers, base.cfg.n_layers))
    out: list[Any] = [None] * len(prompts)
    for name in sorted(set(criteria)):
        idx = [i for i, c in enumerate(criteria) if c == name]
        steering = [SteeringSpec(directions=sets[name], gamma=float(spec.strength), layers=layers)]
        gens = generate(
            base,
            [prompts[i] for i in idx],
            decoding,
            steering=steering,
            batch_size=batch_size,
            progress=progress,
        )
        for i, g in zip(idx, gens):
            out[i] = g
    return out


def answer_instructions(
    spec: SystemSpec,
    base: LensModel,
    instructions: Sequence[str],
    decoding=None,
    *,
    out: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = False,
    criteria: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The system's answer to each instruction: ``{"instruction", "answer", "tokens", "finished"}``.

    Args:
        spec: The system.
        base: The base model (answers for ``base``/``alignez``/``steer``; its tokenizer counts tokens).
        instructions: The instructions.
        decoding: Decoding settings (greedy, 96 new tokens by default).
        out: JSONL file; if it already holds answers to exactly these instructions they are
            returned without generating.
        batch_size: Rows per forward pass.
        progress: Show a progress bar.
        criteria: Per-instruction criterion for ``steer`` systems (default: argmax consistency).
    """
    decoding = decoding or Decoding(max_new_tokens=96)
    if not instructions:
        raise ValueError("no instructions to answer")
    path = Path(out) if out is not None else None
    if path is not None and path.is_file():
        have = read_jsonl(path)
        if [r["instruction"] for r in have] == list(instructions):
            log.info("reusing the answers in %s", path)
            return have
        raise ValueError(
            f"{path} holds answers to other instructions; delete it or choose another --out"
        )
    gens = _generations(
        spec,
        base,
        instructions,
        decoding,
        batch_size=batch_size,
        progress=progress,
        criteria=criteria,
    )
    rows = [
        {
            "instruction": d,
            "answer": g.text,
            "tokens": len(g.token_ids),
            "finished": g.finished,
            "system": spec.name,
        }
        for d, g in zip(instructions, gens)
    ]
    if path is not None:
        write_jsonl(path, rows)
    return rows
