"""Self-synthesis of instructions, Magpie-style: the model writes the user's turn itself.

The prompt is only the part of the chat template that comes before a user's words (for ChatML
with SmolLM2's default system prompt: ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n``).
It is derived from the tokenizer's own template by :func:`~icon2_lens.template.user_turn_template`:
the template is rendered around a marker string and split there, so no per-model table is
needed. The model, having been trained on that layout, continues with something a user would
write; sampling stops at the end of the user turn (the template's end-of-turn token, or EOS).
No seed instructions are used.

Samples are drawn in batches; sample ``i`` uses its own generator seeded from ``(seed, i)``, so a
sample's text does not depend on the batch size, and an interrupted run resumes from the raw
samples already written. The raw samples are then cleaned by
:func:`~icon2_lens.clean.clean_instructions`, which reports how many survive each step.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ._types import LensModel
from .generate import Decoding, Generation, generate_rows
from .io import append_jsonl, read_jsonl
from .template import user_turn_template

__all__ = ["SynthesisConfig", "synthesize_raw", "synthesize_instructions", "template_markers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SynthesisConfig:
    """Sampling settings for self-synthesis.

    Attributes:
        n: Raw samples to draw (the cleaned set is smaller: expect well under half to survive
            with a 135M model).
        temperature: Sampling temperature (1.0: the model's own distribution, as in Magpie).
        top_p: Nucleus mass.
        max_new_tokens: Budget for one instruction; longer samples are dropped as incomplete.
        seed: Base seed.
        batch_size: Samples per batch.
        system: System prompt rendered before the user turn (``None``: the template's default).
    """

    n: int = 512
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 32
    system: str | None = None

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
    if config.n < 1:
        raise ValueError(f"n must be at least 1, got {config.n}")
    tok = model.tokenizer
    turn = user_turn_template(tok, system=config.system)
    prefix = tok(turn.prefix, add_special_tokens=False)["input_ids"]
    decoding = Decoding(max_new_tokens=config.max_new_tokens, do_sample=True, temperature=config.temperature,
                        top_p=config.top_p, seed=config.seed)
    path = Path(out) if out is not None else None
    header = {"icon2_synthesis": config.settings(), "prefix": turn.prefix}
    rows: list[dict[str, Any]] = []
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = read_jsonl(path, repair=True)
        if existing:
            if existing[0] != header:
                raise ValueError(
                    f"{path} holds samples drawn with other settings or another template; "
                    "choose another output file or delete it"
                )
            rows = existing[1:]
        else:
            append_jsonl(path, [header])
    start = len(rows)
    if start:
        log.info("resuming synthesis: %d of %d samples already drawn", start, config.n)
    starts = range(start, config.n, config.batch_size)
    for s in tqdm(starts, desc="synthesize", unit="batch", disable=not progress):
        count = min(config.batch_size, config.n - s)
        gens: list[Generation] = generate_rows(model, [prefix] * count, decoding, row_seeds=range(s, s + count))
        new = [{"index": s + j, "text": g.text, "finished": g.finished, "n_tokens": len(g.token_ids)}
               for j, g in enumerate(gens)]
        if path is not None:
            append_jsonl(path, new)
        rows.extend(new)
    return rows[: config.n]


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
        ``(raw, report)``: the raw samples and the :class:`~icon2_lens.clean.CleanReport`.
    """
    from .clean import clean_instructions

    raw = synthesize_raw(model, config, out=raw_path, progress=progress)
    report = clean_instructions(
        [r["text"] for r in raw],
        finished=[bool(r["finished"]) for r in raw],
        markers=template_markers(model.tokenizer),
        **clean_options,
    )
    log.info("synthesis: %s", json.dumps(report.counts))
    return raw, report
