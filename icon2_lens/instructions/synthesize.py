"""Self-synthesis of instructions, Magpie-style: the model writes the user's turn itself.

The prompt is only the part of the chat template that comes before a user's words (for ChatML
with SmolLM2's default system prompt: ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n``).
It is derived from the tokenizer's own template by :func:`~icon2_lens.model.chat.user_turn_template`:
the template is rendered around a marker string and split there, so no per-model table is
needed. The model, having been trained on that layout, continues with something a user would
write; sampling stops at the end of the user turn (the template's end-of-turn token, or EOS).
No seed instructions are used.

Samples are drawn in batches; sample ``i`` uses its own generator seeded from ``(seed, i)``, so a
sample's text does not depend on the batch size, and an interrupted run resumes from the raw
samples already written. The raw file's first line records what made them (the sampling
settings, the template prefix and the model's weight fingerprint); a run with anything else is
refused, so samples of another model are never mixed in. The raw samples are then cleaned by
:func:`~icon2_lens.instructions.clean.clean_instructions`, which reports how many survive each step.

Batches are fixed slices of the sample indices (``0..batch_size-1``, …) without the samples
already drawn. Under a multi-process launch (docs/scaling.md) each rank draws its share of the
batches (round robin) into ``raw.part-<rank>-of-<world>.jsonl``, and rank 0 merges them into the
raw file in index order, byte-identical to one process's file (:mod:`icon2_lens._shard`).
"""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from icon2_lens._config import documented, option
from icon2_lens._files import (
    append_jsonl,
    read_jsonl,
    settings_differences,
    write_json,
    write_jsonl,
)
from icon2_lens._shard import (
    Shard,
    current_shard,
    main_first,
    merge_parts,
    part_files,
    read_with_parts,
    wait_for_everyone,
)
from icon2_lens._types import LensModel
from icon2_lens.model.chat import user_turn_template
from icon2_lens.model.generate import Decoding, Generation, generate_rows
from icon2_lens.model.load import model_fingerprint

from .clean import CleanReport, clean_instructions

__all__ = [
    "SynthesisConfig",
    "synthesize_raw",
    "synthesize_instructions",
    "template_markers",
    "write_synthesis",
]

log = logging.getLogger(__name__)


@documented
@dataclass(frozen=True, kw_only=True)
class SynthesisConfig:
    """Sampling settings for self-synthesis (everything but ``n`` and ``batch_size`` is recorded in ``raw.jsonl``,
    with the chat-template prefix and the model's weight fingerprint)."""

    n: int = option(
        512,
        help="raw samples to draw (with a 135M model, expect well under half to survive cleaning)",
    )
    temperature: float = option(
        1.0, help="sampling temperature (1.0: the model's own distribution, as in Magpie)"
    )
    top_p: float = option(0.95, help="nucleus mass")
    max_new_tokens: int = option(
        64, help="budget of one instruction; longer samples are dropped as incomplete"
    )
    seed: int = option(
        0, help="base seed (sample i draws from its own generator seeded by (seed, i))"
    )
    batch_size: int = option(32, help="samples per batch; does not change the samples")
    system: str | None = option(
        None, help="system prompt rendered before the user turn (none: the template's default)"
    )

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def settings(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "system": self.system,
        }


def template_markers(tokenizer) -> list[str]:
    """Strings that must not appear in a clean instruction: special tokens and role headers."""
    markers = {t for t in tokenizer.all_special_tokens if t and t.strip()}
    for role in ("system", "user", "assistant"):
        try:
            turn = user_turn_template(tokenizer)
        except ValueError:
            break
        if role in turn.prefix:
            markers.add(f"{role}\n" if f"{role}\n" in turn.prefix else role + ":")
    return sorted(markers)


def synthesize_raw(
    model: LensModel,
    config: SynthesisConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Draw ``config.n`` raw instructions; with ``out`` (a ``.jsonl`` file) append as they come and resume.

    Returns:
        One dict per sample: ``{"index", "text", "finished", "n_tokens"}``.
    """
    config = config or SynthesisConfig()
    tok = model.tokenizer
    turn = user_turn_template(tok, system=config.system)
    prefix = tok(turn.prefix, add_special_tokens=False)["input_ids"]
    decoding = Decoding(
        max_new_tokens=config.max_new_tokens,
        do_sample=True,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
    )
    path = Path(out) if out is not None else None
    shard, rows = Shard(), []
    if path is not None:
        header = {
            "icon2_synthesis": config.settings(),
            "prefix": turn.prefix,
            "model_fingerprint": model_fingerprint(model),
        }
        shard = current_shard()
        with main_first(shard):  # rank 0 writes the header of a new file
            rows = _resume_raw(path, header)
        wait_for_everyone(shard)  # every rank has read before any appends
    done = {r["index"] for r in rows}
    if done and shard.main:
        log.info("resuming synthesis: %d of %d samples already drawn", len(done), config.n)
    batches = [
        [i for i in range(s, min(s + config.batch_size, config.n)) if i not in done]
        for s in range(0, config.n, config.batch_size)
    ]
    target = shard.part_path(path) if path is not None and shard.sharded else path
    for batch in tqdm(
        shard.mine([b for b in batches if b]),
        desc="synthesize",
        unit="batch",
        disable=not (progress and shard.main),
    ):
        gens: list[Generation] = generate_rows(
            model, [prefix] * len(batch), decoding, row_seeds=batch
        )
        new = [
            {"index": i, "text": g.text, "finished": g.finished, "n_tokens": len(g.token_ids)}
            for i, g in zip(batch, gens)
        ]
        if target is not None:
            append_jsonl(target, new)
        rows.extend(new)
    if path is not None and (shard.sharded or part_files(path)):
        wait_for_everyone(shard)  # every rank has appended its last batch
        if shard.main:
            merge_parts(path, _sample_index, header=1)
        wait_for_everyone(shard)  # the merged file is complete
        rows = read_jsonl(path)[1:]
    rows.sort(key=_sample_index)
    return rows[: config.n]


def _sample_index(row: dict[str, Any]) -> int:
    return row["index"]


#: What a difference in a raw file's header key means, for the refusal message.
_DIFF_MEANING = {"prefix": "another chat template", "model_fingerprint": "another model"}


def _resume_raw(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The samples already in ``path`` and its part files (the file's first line must be ``header``),
    or a new file's header.

    Raises:
        ValueError: The file was written with other settings, another chat template or another
            model (its weight fingerprint), naming the file and the differences.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existing, rows = read_with_parts(path, _sample_index, header=1)
    if not existing:
        append_jsonl(path, [header])
        return rows
    diff = settings_differences(header, existing[0])
    if diff:
        meaning = [m for key, m in _DIFF_MEANING.items() if key in diff]
        raise ValueError(
            f"{path} holds samples written with different settings (differences in: "
            f"{', '.join(diff)}{', i.e. ' + ' and '.join(meaning) if meaning else ''}); choose "
            "another output file or delete it"
        )
    return rows


def synthesize_instructions(
    model: LensModel,
    config: SynthesisConfig | None = None,
    *,
    raw_path: str | Path | None = None,
    progress: bool = True,
    **clean_options: Any,
):
    """Draw raw samples and clean them.

    Returns:
        ``(raw, report)``: the raw samples and the :class:`~icon2_lens.instructions.clean.CleanReport`.
    """
    raw = synthesize_raw(model, config, out=raw_path, progress=progress)
    report = clean_instructions(
        [r["text"] for r in raw],
        finished=[bool(r["finished"]) for r in raw],
        markers=template_markers(model.tokenizer),
        **clean_options,
    )
    log.info("synthesis: %s", json.dumps(report.counts))
    return raw, report


def write_synthesis(
    report: CleanReport,
    config: SynthesisConfig,
    n_raw: int,
    *,
    instructions: str | Path,
    summary: str | Path,
) -> None:
    """Write the clean instructions (``{"instruction", "index"}`` per line) and then the summary JSON.

    The summary (settings, raw count, survivors per cleaning step, a few examples) is written last,
    so its presence marks the synthesis as finished.
    """
    write_jsonl(
        instructions,
        [{"instruction": t, "index": i} for t, i in zip(report.kept, report.kept_index)],
    )
    write_json(
        {
            "settings": config.settings(),
            "n_raw": n_raw,
            "counts": report.counts,
            "examples": report.kept[:10],
        },
        summary,
    )
