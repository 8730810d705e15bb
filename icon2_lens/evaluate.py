"""Compare systems on an instruction set: answer with each, judge every answer against a reference.

A *system* is something that answers instructions:

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
so an interrupted evaluation resumes system by system). Every answer is then judged by the
*base* model (the judges of :mod:`icon2_lens.judges`), against the reference system's answer to
the same instruction: a win rate with a bootstrap 95 % interval and a length-controlled win
rate per judge. The refusal judge is read on the harmful requests only; alongside it the
over-refusal rate on the benign ones is reported.

Example:
    >>> parse_system("alignez:runs/x/alignez@0.5")
    SystemSpec(name='alignez', kind='alignez', path='runs/x/alignez', strength=0.5, layers=None)
"""

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from ._types import LensModel
from .io import read_jsonl, write_json

__all__ = [
    "SystemSpec",
    "parse_system",
    "answer_instructions",
    "judge_answers",
    "system_stats",
    "DEFAULT_JUDGES",
]

log = logging.getLogger(__name__)

#: Judges used when none are named: inherent score, pairwise self-judgement, fluency, refusals.
DEFAULT_JUDGES: tuple[str, ...] = ("inherent", "self_pairwise", "fluency", "refusal")


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
        raise ValueError("empty system: use base, model:PATH, alignez:DIR[@STRENGTH] or steer:DIR@GAMMA@LAYERS")
    if text == "base":
        return SystemSpec(name or "base", "base")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("model", "alignez", "steer"):
        return SystemSpec(name or Path(text).name or text, "model", text)
    if kind == "model":
        return SystemSpec(name or "model", "model", rest)
    parts = rest.split("@")
    try:
        strength = float(parts[1]) if len(parts) > 1 else None
    except ValueError as e:
        raise ValueError(f"{text!r}: the value after '@' must be a number") from e
    if strength is not None and not math.isfinite(strength):
        raise ValueError(f"{text!r}: the strength must be finite")
    if kind == "alignez":
        return SystemSpec(name or "alignez", "alignez", parts[0], strength)
    if len(parts) != 3:
        raise ValueError(f"{text!r}: use steer:DIR@GAMMA@LAYERS, e.g. steer:runs/x/extract@0.02@13-22")
    return SystemSpec(name or "steer", "steer", parts[0], strength, parts[2])


def _generations(spec: SystemSpec, base: LensModel, instructions: Sequence[str], decoding, *,
                 batch_size: int, progress: bool, criteria: Sequence[str] | None):
    from .chat import render_chat
    from .generate import generate

    prompts = [render_chat(base.tokenizer, d) for d in instructions]
    if spec.kind == "base":
        return generate(base, prompts, decoding, batch_size=batch_size, progress=progress)
    if spec.kind == "model":
        from .models import load_model

        other = load_model(spec.path)
        try:
            return generate(other, [render_chat(other.tokenizer, d) for d in instructions], decoding,
                            batch_size=batch_size, progress=progress)
        finally:
            del other
    if spec.kind == "alignez":
        from .alignez import generate_alignez, load_alignez

        edit = load_alignez(spec.path, model=base)
        return generate_alignez(base, instructions, edit, decoding, strength=spec.strength,
                                batch_size=batch_size, progress=progress)
    if spec.kind == "steer":
        return _steered(spec, base, instructions, prompts, decoding, batch_size=batch_size,
                        progress=progress, criteria=criteria)
    raise ValueError(f"unknown system kind {spec.kind!r}")


def _steered(spec, base, instructions, prompts, decoding, *, batch_size, progress, criteria):
    from .consistency import score_consistency
    from .generate import generate
    from .hooks import parse_layers
    from .io import load_extraction
    from .steer import SteeringSpec

    sets, _ = load_extraction(spec.path, model=base)
    if criteria is None:
        criteria = score_consistency(base, list(instructions), list(sets.values()), progress=False).best_criterion
    layers = tuple(parse_layers(spec.layers, base.cfg.n_layers))
    out: list[Any] = [None] * len(prompts)
    for name in sorted(set(criteria)):
        idx = [i for i, c in enumerate(criteria) if c == name]
        steering = [SteeringSpec(directions=sets[name], gamma=float(spec.strength), layers=layers)]
        gens = generate(base, [prompts[i] for i in idx], decoding, steering=steering, batch_size=batch_size,
                        progress=progress)
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
    from .generate import Decoding

    decoding = decoding or Decoding(max_new_tokens=96)
    if not instructions:
        raise ValueError("no instructions to answer")
    path = Path(out) if out is not None else None
    if path is not None and path.is_file():
        have = read_jsonl(path)
        if [r["instruction"] for r in have] == list(instructions):
            log.info("reusing the answers in %s", path)
            return have
        raise ValueError(f"{path} holds answers to other instructions; delete it or choose another --out")
    gens = _generations(spec, base, instructions, decoding, batch_size=batch_size, progress=progress,
                        criteria=criteria)
    rows = [{"instruction": d, "answer": g.text, "tokens": len(g.token_ids), "finished": g.finished,
             "system": spec.name} for d, g in zip(instructions, gens)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
    return rows


def system_stats(model: LensModel, answers: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
    """Plain counts for one system: answer length, degenerate answers, refusals by request kind."""
    from .judges import RefusalJudge
    from .score import degeneracy

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
) -> dict[str, dict[str, Any]]:
    """Every system against ``reference`` under every judge: ``{system: {judge: comparison dict}}``.

    Pointwise judges score each system's answers once; pairwise judges see (system, reference)
    pairs in both orders. The refusal judge is read on the harmful requests only (a refusal is
    the wanted answer there); every other judge on all instructions. Lengths for the
    length-controlled win rate are answer token counts.
    """
    from .judges import compare_pairwise, compare_pointwise

    if reference not in answers:
        raise ValueError(f"no answers of the reference system {reference!r}")
    kinds = list(kinds)
    for name, rows in answers.items():
        if [r["instruction"] for r in rows] != list(instructions):
            raise ValueError(f"the answers of {name!r} are not for these instructions (in this order)")
    cache: dict[tuple[str, str], np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    for judge in judges:
        idx = [i for i, k in enumerate(kinds) if k == "harmful"] if judge.name == "refusal" else list(range(len(kinds)))
        if not idx:
            log.warning("judge %s: no instructions in its scope; skipped", judge.name)
            continue
        ins = [instructions[i] for i in idx]

        def texts(system: str, idx=idx) -> list[str]:
            return [answers[system][i]["answer"] for i in idx]

        def lengths(system: str, idx=idx) -> np.ndarray:
            return np.array([answers[system][i]["tokens"] for i in idx], dtype=float)

        def scores(system: str, judge=judge, ins=ins) -> np.ndarray:
            key = (judge.name, system)
            if key not in cache:
                cache[key] = np.asarray(judge.score(ins, texts(system)), dtype=float)
            return cache[key]

        for system in answers:
            if system == reference:
                continue
            try:
                if judge.kind == "pointwise":
                    cmp = compare_pointwise(scores(system), scores(reference), lengths_a=lengths(system),
                                            lengths_b=lengths(reference), judge_name=judge.name,
                                            description=judge.description, seed=seed)
                else:
                    prefs = judge.prefer(ins, texts(system), texts(reference))
                    cmp = compare_pairwise(prefs, lengths_a=lengths(system), lengths_b=lengths(reference),
                                           judge_name=judge.name, description=judge.description, seed=seed)
            except ValueError as e:  # e.g. every answer empty: nothing this judge can score
                log.warning("%s vs %s under %s: not compared (%s)", system, reference, judge.name, e)
                out.setdefault(system, {})[judge.name] = {"judge": judge.name, "n": 0, "win_rate": None,
                                                          "lc_win_rate": None, "note": str(e)}
                continue
            entry = cmp.to_dict()
            entry["scope"] = "harmful" if judge.name == "refusal" else "all"
            if judge.kind == "pointwise":
                entry["mean_score"] = float(np.nanmean(scores(system)))
                entry["mean_score_reference"] = float(np.nanmean(scores(reference)))
            out.setdefault(system, {})[judge.name] = entry
    return out


def write_answers_table(answers: Mapping[str, Sequence[Mapping[str, Any]]], kinds: Sequence[str],
                        path: str | Path) -> None:
    """All systems' answers side by side, one JSON line per instruction."""
    names = list(answers)
    first = answers[names[0]]
    lines = []
    for i, row in enumerate(first):
        rec = {"instruction": row["instruction"], "kind": kinds[i]}
        rec.update({name: answers[name][i]["answer"] for name in names})
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


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

    Returns:
        ``{"n", "n_harmful", "reference", "judges": {name: description}, "comparisons",
        "stats", "decoding"}``.
    """
    from .generate import Decoding

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
        answers[spec.name] = answer_instructions(spec, base, instructions, decoding, out=out / "answers" / f"{spec.name}.jsonl",
                                                 batch_size=batch_size, progress=progress)
    comparisons = judge_answers(base, instructions, kinds, answers, judges, reference=reference, seed=seed,
                                progress=progress)
    result = {
        "n": len(instructions),
        "n_harmful": sum(k == "harmful" for k in kinds),
        "reference": reference,
        "judges": {j.name: j.description for j in judges},
        "judge_order": [j.name for j in judges],
        "comparisons": comparisons,
        "stats": {name: system_stats(base, rows, kinds) for name, rows in answers.items()},
        "decoding": decoding.to_dict(),
        "systems": {s.name: {"kind": s.kind, "path": s.path, "strength": s.strength, "layers": s.layers}
                    for s in systems},
    }
    write_answers_table(answers, kinds, out / "answers.jsonl")
    write_json(result, out / "eval.json")
    return result


def results_frame(result: Mapping[str, Any]) -> "pd.DataFrame":
    """Every comparison of an ``eval.json`` as rows: system, judge, scope, n, win rate and LC win rate."""
    import pandas as pd

    rows = []
    for system, by_judge in result["comparisons"].items():
        for judge, c in by_judge.items():
            rows.append({"system": system, "judge": judge, "scope": c.get("scope"), "n": c["n"],
                         "win rate": _interval_text(c["win_rate"]), "LC win rate": _interval_text(c["lc_win_rate"]),
                         "tie rate": c.get("tie_rate")})
    return pd.DataFrame(rows)


def _interval_text(x: Mapping[str, Any] | None) -> str:
    return "n/a" if x is None else f"{x['value']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


# --------------------------------------------------------------------------------------------
# command line


def add_eval_arguments(p) -> None:
    """Options of ``icon2-lens eval``."""
    p.add_argument("--model", default=None, help="the base model: embedded key, HF directory or hub id "
                   "(default smollm2-135m); it answers as 'base' and is every judge")
    p.add_argument("--system", action="append", default=[], metavar="[NAME=]SPEC",
                   help="a system to compare with the base (repeatable): model:PATH, alignez:DIR[@STRENGTH], "
                        "steer:DIR@GAMMA@LAYERS, or a model path")
    p.add_argument("--reference", default="base", help="the system every other one is compared with (default base)")
    p.add_argument("--instructions", default="builtin",
                   help="'builtin' (the shipped held-out set with harmful requests) or a .jsonl with "
                        "'instruction' and optional 'kind' (benign/harmful) or a .txt file")
    p.add_argument("--n-benign", type=int, default=None, help="first N benign built-in instructions (default all)")
    p.add_argument("--n-harmful", type=int, default=None, help="first N harmful built-in instructions (default all)")
    p.add_argument("--judges", default=",".join(DEFAULT_JUDGES),
                   help=f"comma-separated judges (default {','.join(DEFAULT_JUDGES)})")
    p.add_argument("--directions", default=None, help="extraction directory (needed by the inherent judge)")
    p.add_argument("--layers", default=None,
                   help="layers the inherent judge averages over, e.g. 13-22 (default: each criterion's "
                        "recommended interval from the extraction)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _eval_records(args) -> list[dict[str, Any]]:
    from .instructions import load_eval_instructions, read_instruction_file

    if args.instructions == "builtin":
        out = load_eval_instructions("benign", n=args.n_benign)
        return out + load_eval_instructions("harmful", n=args.n_harmful)
    path = Path(args.instructions)
    if path.suffix.lower() == ".jsonl" and path.is_file():
        texts = read_instruction_file(path)  # validates every line, with its number
        kinds = [json.loads(line).get("kind", "benign") for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        bad = sorted({k for k in kinds if k not in ("benign", "harmful")})
        if bad:
            raise ValueError(f"{path}: unknown kind(s) {bad}; use 'benign' or 'harmful'")
        return [{"instruction": t, "kind": k} for t, k in zip(texts, kinds)]
    return [{"instruction": t, "kind": "benign"} for t in read_instruction_file(path)]


def cli_eval(args) -> dict[str, Any]:
    """``icon2-lens eval``: answer with each system, judge against the reference, write ``eval.json``
    (returned; the command prints :func:`results_frame` of it)."""
    from .generate import Decoding
    from .hooks import parse_layers
    from .judges import make_judge
    from .models import load_model

    if not args.system:
        raise ValueError("name at least one --system to compare with the base, e.g. --system model:runs/x/dpo/model")
    names = [j.strip() for j in args.judges.split(",") if j.strip()]
    systems = [SystemSpec("base", "base")]
    for text in args.system:
        name, sep, spec = text.partition("=")
        systems.append(parse_system(spec, name) if sep and ":" not in name else parse_system(text))
    records = _eval_records(args)
    model = load_model(args.model)
    sets = layers = None
    if args.directions:
        from .io import load_extraction

        sets, intervals = load_extraction(args.directions, model=model)
        layers = parse_layers(args.layers, model.cfg.n_layers) if args.layers else intervals
    judges = [make_judge(name, model, direction_sets=sets, layers=layers) for name in names]
    with __import__("torch").no_grad():
        result = evaluate_systems(model, systems, records, judges, out=args.out, reference=args.reference,
                                  decoding=Decoding(max_new_tokens=args.max_new_tokens), batch_size=args.batch_size,
                                  seed=args.seed, progress=not args.no_progress)
    return result
