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

Answers are greedy by default and written one JSONL file per system, ``<name>.jsonl``, with
``<name>.settings.json`` beside it (written first): the system spec, a digest of the files it
reads, the decoding and the base model's weight fingerprint. A finished file is reused only when
all of these match, so an interrupted evaluation resumes system by system and a re-run with
another system, decoding or model under the same name is refused instead of judging old answers.

Example:
    >>> parse_system("alignez:runs/x/alignez@0.5")
    SystemSpec(name='alignez', kind='alignez', path='runs/x/alignez', strength=0.5, layers=None)
"""

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icon2_lens._cache import file_sha256
from icon2_lens._config import parse_layer_spec
from icon2_lens._files import (
    check_settings,
    read_json,
    read_jsonl,
    settings_differences,
    write_json,
    write_jsonl,
)
from icon2_lens._types import LensModel
from icon2_lens.alignez.apply import generate_alignez
from icon2_lens.alignez.edit import load_alignez
from icon2_lens.consistency.scores import score_consistency
from icon2_lens.directions.folder import load_extraction
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.model.chat import render_chat
from icon2_lens.model.generate import Decoding, generate
from icon2_lens.model.hooks import parse_layers
from icon2_lens.model.load import load_model, model_fingerprint

__all__ = [
    "SystemSpec",
    "parse_system",
    "check_system",
    "SYSTEM_KINDS",
    "answer_instructions",
    "answer_settings",
    "settings_path",
    "source_digest",
]

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
        out: JSONL file, with ``<name>.settings.json`` beside it (:func:`answer_settings`); if
            it already holds answers to exactly these instructions, made with the same
            settings, they are returned without generating.
        batch_size: Rows per forward pass.
        progress: Show a progress bar.
        criteria: Per-instruction criterion for ``steer`` systems (default: argmax consistency).

    Raises:
        ValueError: ``out`` holds answers to other instructions, or made with other settings
            (another system spec, decoding or base model), or whose settings are not recorded.
    """
    decoding = decoding or Decoding(max_new_tokens=96)
    if not instructions:
        raise ValueError("no instructions to answer")
    path = Path(out) if out is not None else None
    if path is not None:
        settings = answer_settings(spec, base, decoding, criteria)
        if path.is_file():
            return _reuse_answers(path, settings, instructions)
        _record_answer_settings(path, settings)
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


def settings_path(answers: str | Path) -> Path:
    """The settings file beside an answers file: ``<name>.settings.json`` for ``<name>.jsonl``."""
    answers = Path(answers)
    return answers.with_name(f"{answers.stem}.settings.json")


def answer_settings(
    spec: SystemSpec,
    base: LensModel,
    decoding: Decoding,
    criteria: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What makes a system's answers: recorded beside them, and compared before they are reused.

    The system spec (``kind``, ``path``, ``strength``, ``layers``), a digest of the files it reads
    (see :func:`source_digest`), the decoding, the base model's weight fingerprint and the
    per-instruction criteria of a steered system, when given. The name and the batch size are
    not part of it (the name is the file's; the batch size does not change the answers).
    """
    return {
        "system": {
            "kind": spec.kind,
            "path": spec.path,
            "strength": spec.strength,
            "layers": spec.layers,
        },
        "source_sha256": source_digest(spec),
        "decoding": decoding.to_dict(),
        "model_fingerprint": model_fingerprint(base),
        "criteria_sha256": None if criteria is None else _digest(list(criteria)),
    }


#: Files of a system's folder whose contents decide its answers: model weights and config, an
#: AlignEZ edit, the direction sets of an extraction folder.
_SOURCE_FILES = (
    "config.json",
    "cfg.json",
    "*.safetensors",
    "*.gguf",
    "*/cfg.json",
    "*/directions.safetensors",
)


def source_digest(spec: SystemSpec) -> str | None:
    """A short sha256 over the weight and config files of the folder a system reads.

    ``None`` for ``base`` and for a path that is not a local folder (a hub id or an embedded
    model key, named by the path alone). A model retrained, or directions re-extracted, into the
    same folder therefore do not pass for the ones that made earlier answers.
    """
    if spec.kind == "base" or not spec.path or not Path(spec.path).is_dir():
        return None
    root = Path(spec.path)
    files = sorted({p for pattern in _SOURCE_FILES for p in root.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(root).as_posix()}:{file_sha256(f)};".encode())
    return digest.hexdigest()[:16]


def _digest(items: list[str]) -> str:
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def _record_answer_settings(path: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` beside answers about to be written (before them, so they never lack it).

    A settings file left without answers (a run killed before writing them) describes nothing
    and is replaced.
    """
    sidecar = settings_path(path)
    try:
        check_settings(sidecar, settings, what="answers")
    except ValueError:
        log.info("%s describes no answers (none were written); replacing it", sidecar)
        write_json(settings, sidecar)


def _reuse_answers(
    path: Path, settings: dict[str, Any], instructions: Sequence[str]
) -> list[dict[str, Any]]:
    """The answers in ``path`` if they were made with ``settings`` for ``instructions``; else raise."""
    sidecar = settings_path(path)
    fix = "delete it or choose another --out"
    if not sidecar.is_file():
        raise ValueError(
            f"{path} holds answers whose settings are not recorded (no {sidecar.name}, "
            f"written by an older icon2-lens); {fix}"
        )
    have = read_json(sidecar, fix=f"delete it and {path.name}, or choose another --out")
    diff = settings_differences(settings, have if isinstance(have, dict) else {})
    if diff:
        raise ValueError(
            f"{path} holds answers made with other settings (differences in: "
            f"{', '.join(diff)}); {fix}"
        )
    rows = read_jsonl(path)
    if [r.get("instruction") for r in rows] != list(instructions):
        raise ValueError(f"{path} holds answers to other instructions; {fix}")
    log.info("reusing the answers in %s", path)
    return rows
