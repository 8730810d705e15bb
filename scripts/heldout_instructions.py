"""Held-out instructions from a run's own synthesis: the clean ones no pair was made from.

A run keeps a fraction of its clean synthesized instructions (``filter/kept.jsonl``) and makes
pairs from those only; the rest (``filter/scores.jsonl`` holds every clean one) were never
answered, steered or trained on. This script draws ``--n`` of them at random (``--seed``) and
writes them, in pool order, as a ``.jsonl`` that ``icon2-lens eval --instructions`` reads.
Excluded: every kept instruction, every shipped evaluation request, and repeated texts.

Usage (from the repository root, after ``icon2-lens run ... --out runs/default``)::

    .venv/bin/python scripts/heldout_instructions.py runs/default --n 400 --out heldout.jsonl
    .venv/bin/icon2-lens eval --system trained=model:runs/default/dpo/model \\
        --instructions heldout.jsonl --judges relevance,fluency,apology,self_pairwise,length
"""

import argparse
import json
from pathlib import Path

from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.evaluate.judging import builtin_eval_records
from icon2_lens.runs.experiment import draw_unused


def _texts(path: Path) -> list[str]:
    """The ``instruction`` of every record of a JSONL file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: pass the folder of a run whose filter stage ran"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["instruction"] for line in lines if line.strip()]


def heldout_records(run: Path, n: int, seed: int) -> tuple[list[dict], int]:
    """``n`` records ``{"instruction", "kind": "benign", "index"}`` and how many were eligible."""
    pool = [
        KeptInstruction(i, t, "") for i, t in enumerate(_texts(run / "filter" / "scores.jsonl"))
    ]
    excluded = set(_texts(run / "filter" / "kept.jsonl"))
    excluded |= {r["instruction"] for r in builtin_eval_records()}
    return draw_unused(pool, n, seed, texts=excluded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run's folder (icon2-lens run --out)")
    parser.add_argument(
        "--n", type=int, default=400, help="how many to draw (fewer if fewer are eligible)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--out", type=Path, required=True, help="the .jsonl to write")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    try:
        records, eligible = heldout_records(args.run, args.n, args.seed)
    except FileNotFoundError as err:
        parser.error(str(err))  # one line, exit code 2
    args.out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"{eligible} held-out instructions eligible, {len(records)} written to {args.out}")


if __name__ == "__main__":
    main()
