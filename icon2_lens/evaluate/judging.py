"""Judging systems against a reference: every answer under every judge, with intervals.

Every answer is judged by the *base* model (the judges of :mod:`icon2_lens.judge`), against the
reference system's answer to the same instruction: a win rate with a bootstrap 95 % interval and
a length-controlled win rate per judge. The refusal judge is read on the harmful requests only;
alongside it the over-refusal rate on the benign ones is reported.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from icon2_lens._config import documented, option
from icon2_lens._files import read_jsonl, write_json, write_jsonl
from icon2_lens._types import LensModel
from icon2_lens.instructions.builtin import load_eval_instructions, read_instruction_file
from icon2_lens.judge.compare import compare_pairwise, compare_pointwise, score_once
from icon2_lens.judge.registry import JUDGES
from icon2_lens.judge.rules import RefusalJudge, degeneracy
from icon2_lens.model.generate import Decoding

from .systems import SystemSpec, answer_instructions

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EvalConfig",
    "DEFAULT_JUDGES",
    "judge_answers",
    "system_stats",
    "write_answers_table",
    "write_scores_table",
    "evaluate_systems",
    "results_frame",
    "builtin_eval_records",
    "read_eval_records",
]

log = logging.getLogger(__name__)

#: Judges used when none are named: inherent score, pairwise self-judgement, fluency, refusals.
DEFAULT_JUDGES: tuple[str, ...] = (
    "inherent",
    "self_pairwise",
    "relevance",
    "fluency",
    "refusal",
    "apology",
    "length",
)


@documented
@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How systems are evaluated on held-out instructions."""

    n_benign: int | None = option(None, help="first N benign built-in instructions (none: all 96)")
    n_harmful: int | None = option(
        None, help="first N harmful built-in instructions (none: all 32)"
    )
    judges: tuple[str, ...] = option(
        DEFAULT_JUDGES, help="judges, comma-separated (see icon2_lens.judge.registry)"
    )
    reference: str = option("base", help="the system every other one is compared with")
    max_new_tokens: int = option(96, help="answer budget in tokens (greedy)")
    batch_size: int = option(16, help="rows per forward pass")
    seed: int = option(0, help="seed of the bootstrap intervals")

    def __post_init__(self) -> None:
        for name in ("n_benign", "n_harmful"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.judges:
            raise ValueError("name at least one judge")
        bad = [name for name in self.judges if name not in JUDGES]
        if bad:
            raise ValueError(f"unknown judge(s) {bad}; use some of {', '.join(JUDGES)}")
        if self.n_benign == 0 and self.n_harmful == 0:
            raise ValueError("n_benign + n_harmful must be at least 1")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")


def system_stats(
    model: LensModel, answers: Sequence[Mapping[str, Any]], kinds: Sequence[str]
) -> dict[str, Any]:
    """Plain counts for one system: answer length, degenerate answers, refusals by request kind."""
    tok = model.tokenizer
    texts = [a["answer"] for a in answers]
    refusals = RefusalJudge().score([a["instruction"] for a in answers], texts)
    bad = [degeneracy(t, tok(t, add_special_tokens=False)["input_ids"]) is not None for t in texts]
    kinds = list(kinds)

    def rate(values, kind):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        return float(np.mean([values[i] for i in idx])) if idx else float("nan")

    return {
        "n": len(texts),
        "mean_tokens": float(np.mean([a["tokens"] for a in answers])),
        "unfinished": float(np.mean([not a["finished"] for a in answers])),
        "degenerate": float(np.mean(bad)),
        "refusal_harmful": rate(refusals, "harmful"),
        "refusal_benign": rate(refusals, "benign"),
    }


def _not_compared(judge: str, system: str, reference: str, error: ValueError) -> dict[str, Any]:
    """The record of a comparison a judge could not make (logged as a warning)."""
    log.warning("%s vs %s under %s: not compared (%s)", system, reference, judge, error)
    return {"judge": judge, "n": 0, "win_rate": None, "lc_win_rate": None, "note": str(error)}


def judge_answers(
    model: LensModel,
    instructions: Sequence[str],
    kinds: Sequence[str],
    answers: Mapping[str, Sequence[Mapping[str, Any]]],
    judges: Sequence[Any],
    *,
    reference: str = "base",
    seed: int = 0,
    progress: bool = False,
    per_answer: dict[str, dict[str, list[float | None]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every system against ``reference`` under every judge: ``{system: {judge: comparison dict}}``.

    Pointwise judges score each system's answers once; pairwise judges see (system, reference)
    pairs in both orders. The refusal judge is read on the harmful requests only (a refusal is
    the wanted answer there); every other judge on all instructions. Lengths for the
    length-controlled win rate are answer token counts.

    Args:
        per_answer: if given, filled with what every judge read per instruction, the numbers the
            win rates are made of: ``{judge: {system: values}}``, one value per instruction
            (``None`` outside the judge's scope; a comparison that failed is left out). A
            pointwise judge gives every system's score, the reference's included; a pairwise
            judge its preference for each system's answer over the reference's, in [0, 1] (1:
            the system's). Written by :func:`evaluate_systems` as ``scores.jsonl``, to slice the
            win rates by any property of the instructions or answers.
    """
    if reference not in answers:
        raise ValueError(f"no answers of the reference system {reference!r}")
    kinds = list(kinds)
    for name, rows in answers.items():
        if [r["instruction"] for r in rows] != list(instructions):
            raise ValueError(
                f"the answers of {name!r} are not for these instructions (in this order)"
            )
    out: dict[str, dict[str, Any]] = {}
    for judge in judges:
        idx = (
            [i for i, k in enumerate(kinds) if k == "harmful"]
            if judge.name == "refusal"
            else list(range(len(kinds)))
        )
        if not idx:
            log.warning("judge %s: no instructions in its scope; skipped", judge.name)
            continue
        ins = [instructions[i] for i in idx]

        def texts(system: str, idx=idx) -> list[str]:
            return [answers[system][i]["answer"] for i in idx]

        def lengths(system: str, idx=idx) -> np.ndarray:
            return np.array([answers[system][i]["tokens"] for i in idx], dtype=float)

        scores: dict[str, np.ndarray] = {}
        failed = None
        if judge.kind == "pointwise":  # every distinct answer once: equal answers tie exactly
            try:
                scores = dict(zip(answers, score_once(judge, ins, *(texts(s) for s in answers))))
            except ValueError as e:
                failed = e
            else:
                for system, values in scores.items():
                    _record(per_answer, judge.name, system, idx, values, len(kinds))

        for system in answers:
            if system == reference:
                continue
            if failed is not None:
                out.setdefault(system, {})[judge.name] = _not_compared(
                    judge.name, system, reference, failed
                )
                continue
            try:
                if judge.kind == "pointwise":
                    cmp = compare_pointwise(
                        scores[system],
                        scores[reference],
                        lengths_a=lengths(system),
                        lengths_b=lengths(reference),
                        judge_name=judge.name,
                        description=judge.description,
                        seed=seed,
                    )
                else:
                    prefs = judge.prefer(ins, texts(system), texts(reference))
                    cmp = compare_pairwise(
                        prefs,
                        lengths_a=lengths(system),
                        lengths_b=lengths(reference),
                        judge_name=judge.name,
                        description=judge.description,
                        seed=seed,
                    )
                    _record(per_answer, judge.name, system, idx, prefs, len(kinds))
            except ValueError as e:  # e.g. every answer empty: nothing this judge can score
                out.setdefault(system, {})[judge.name] = _not_compared(
                    judge.name, system, reference, e
                )
                continue
            entry = cmp.to_dict()
            entry["scope"] = "harmful" if judge.name == "refusal" else "all"
            if judge.kind == "pointwise":
                entry["mean_score"] = float(np.nanmean(scores[system]))
                entry["mean_score_reference"] = float(np.nanmean(scores[reference]))
            out.setdefault(system, {})[judge.name] = entry
    return out


def _record(
    per_answer: dict[str, dict[str, list[float | None]]] | None,
    judge: str,
    system: str,
    idx: Sequence[int],
    values: Any,
    n: int,
) -> None:
    """Put one judge's values for one system at instructions ``idx`` (``None`` elsewhere)."""
    if per_answer is None:
        return
    row: list[float | None] = [None] * n
    for i, v in zip(idx, np.asarray(values, dtype=float).tolist()):
        row[i] = None if v != v else v  # NaN is no reading: JSON null
    per_answer.setdefault(judge, {})[system] = row


def write_scores_table(
    per_answer: Mapping[str, Mapping[str, Sequence[float | None]]],
    instructions: Sequence[str],
    kinds: Sequence[str],
    path: str | Path,
) -> None:
    """What every judge read, one JSON line per instruction: ``{"instruction", "kind", judge: {system: value}}``.

    Example:
        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "scores.jsonl"
        >>> write_scores_table({"length": {"base": [3.0], "dpo": [5.0]}}, ["q"], ["benign"], f)
        >>> json.loads(f.read_text())["length"]
        {'base': 3.0, 'dpo': 5.0}
    """
    rows = [
        {
            "instruction": text,
            "kind": kinds[i],
            **{
                judge: {system: values[i] for system, values in by_system.items()}
                for judge, by_system in per_answer.items()
            },
        }
        for i, text in enumerate(instructions)
    ]
    write_jsonl(path, rows)


def write_answers_table(
    answers: Mapping[str, Sequence[Mapping[str, Any]]], kinds: Sequence[str], path: str | Path
) -> None:
    """All systems' answers side by side, one JSON line per instruction."""
    names = list(answers)
    rows = []
    for i, row in enumerate(answers[names[0]]):
        rows.append(
            {
                "instruction": row["instruction"],
                "kind": kinds[i],
                **{name: answers[name][i]["answer"] for name in names},
            }
        )
    write_jsonl(path, rows)


def evaluate_systems(
    base: LensModel,
    systems: Sequence[SystemSpec],
    records: Sequence[Mapping[str, Any]],
    judges: Sequence[Any],
    *,
    out: str | Path,
    decoding=None,
    reference: str = "base",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer ``records`` (``{"instruction", "kind"}``) with every system, judge, write ``eval.json``.

    Beside it: ``answers.jsonl`` (every system's answer per instruction) and ``scores.jsonl``
    (what every judge read per instruction, see ``per_answer`` in :func:`judge_answers`).

    Returns:
        ``{"n", "n_harmful", "reference", "judges": {name: description}, "comparisons",
        "stats", "decoding"}``.
    """
    decoding = decoding or Decoding(max_new_tokens=96)
    out = Path(out)
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique, got {names}")
    if reference not in names:
        raise ValueError(f"the reference system {reference!r} is not among {names}")
    if not records:
        raise ValueError("no instructions to evaluate on")
    instructions = [r["instruction"] for r in records]
    kinds = [r.get("kind", "benign") for r in records]
    answers = {}
    for spec in systems:
        answers[spec.name] = answer_instructions(
            spec,
            base,
            instructions,
            decoding,
            out=out / "answers" / f"{spec.name}.jsonl",
            batch_size=batch_size,
            progress=progress,
        )
    per_answer: dict[str, dict[str, list[float | None]]] = {}
    comparisons = judge_answers(
        base,
        instructions,
        kinds,
        answers,
        judges,
        reference=reference,
        seed=seed,
        progress=progress,
        per_answer=per_answer,
    )
    result = {
        "n": len(instructions),
        "n_harmful": sum(k == "harmful" for k in kinds),
        "reference": reference,
        "judges": {j.name: j.description for j in judges},
        "judge_order": [j.name for j in judges],
        "comparisons": comparisons,
        "stats": {name: system_stats(base, rows, kinds) for name, rows in answers.items()},
        "decoding": decoding.to_dict(),
        "systems": {
            s.name: {"kind": s.kind, "path": s.path, "strength": s.strength, "layers": s.layers}
            for s in systems
        },
    }
    write_answers_table(answers, kinds, out / "answers.jsonl")
    write_scores_table(per_answer, instructions, kinds, out / "scores.jsonl")
    write_json(result, out / "eval.json")
    return result


def results_frame(result: Mapping[str, Any]) -> "pd.DataFrame":
    """Every comparison of an ``eval.json`` as rows: system, judge, scope, n, win rate and LC win rate."""
    import pandas as pd

    rows = []
    for system, by_judge in result["comparisons"].items():
        for judge, c in by_judge.items():
            rows.append(
                {
                    "system": system,
                    "judge": judge,
                    "scope": c.get("scope"),
                    "n": c["n"],
                    "win rate": _interval_text(c["win_rate"]),
                    "LC win rate": _interval_text(c["lc_win_rate"]),
                    "tie rate": c.get("tie_rate"),
                }
            )
    return pd.DataFrame(rows)


def _interval_text(x: Mapping[str, Any] | None) -> str:
    return "n/a" if x is None else f"{x['value']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def builtin_eval_records(
    n_benign: int | None = None, n_harmful: int | None = None
) -> list[dict[str, Any]]:
    """The first ``n_benign`` benign and ``n_harmful`` harmful built-in evaluation requests (``None``: all, 0: none).

    Example:
        >>> [r["kind"] for r in builtin_eval_records(1, 1)]
        ['benign', 'harmful']
    """
    out: list[dict[str, Any]] = []
    for kind, n in (("benign", n_benign), ("harmful", n_harmful)):
        if n != 0:
            out += load_eval_instructions(kind, n=n)
    if not out:
        raise ValueError("no evaluation instructions: n_benign and n_harmful are both 0")
    return out


def read_eval_records(
    spec: str, n_benign: int | None = None, n_harmful: int | None = None
) -> list[dict[str, Any]]:
    """Evaluation instructions: ``"builtin"`` (:func:`builtin_eval_records`), a ``.jsonl`` file with
    ``instruction`` and an optional ``kind`` (benign/harmful), or a ``.txt`` file (all benign)."""
    if spec == "builtin":
        return builtin_eval_records(n_benign, n_harmful)
    path = Path(spec)
    texts = read_instruction_file(path)  # validates every line, with its number
    if path.suffix.lower() != ".jsonl":
        return [{"instruction": t, "kind": "benign"} for t in texts]
    kinds = [rec.get("kind", "benign") for rec in read_jsonl(path)]
    bad = sorted({k for k in kinds if k not in ("benign", "harmful")})
    if bad:
        raise ValueError(f"{path}: unknown kind(s) {bad}; use 'benign' or 'harmful'")
    return [{"instruction": t, "kind": k} for t, k in zip(texts, kinds)]
