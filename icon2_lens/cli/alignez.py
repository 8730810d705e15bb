"""``icon2-lens alignez fit|generate``: fit an AlignEZ edit from self-generated preferences, or answer with one."""

from pathlib import Path

from icon2_lens._config import ConfigError
from icon2_lens._files import check_writable, write_jsonl
from icon2_lens.alignez.apply import AlignEZEditor
from icon2_lens.alignez.config import AlignEZConfig
from icon2_lens.alignez.edit import load_alignez
from icon2_lens.alignez.fit import fit_alignez
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.instructions.builtin import load_instructions, read_instruction_file
from icon2_lens.model.chat import render_chat
from icon2_lens.model.generate import Decoding, generate

from ._common import (
    Parser,
    Result,
    add_model,
    add_run_options,
    load,
    out_dir,
)

__all__ = ["register", "run"]


def register(sub, parents):
    p = sub.add_parser(
        "alignez",
        parents=parents,
        help="AlignEZ: fit an inference-time edit from self-generated "
        "preferences, or generate with one",
    )
    inner = p.add_subparsers(
        dest="alignez_command", required=True, metavar="{fit,generate}", parser_class=Parser
    )
    fit = inner.add_parser(
        "fit",
        parents=parents,
        help="self-generate preference pairs and fit an AlignEZ edit",
        description="Good/bad descriptions → conditioned answers → per-layer SVD of the "
        "help−harm embeddings → an edit saved to --out (pairs.jsonl resumes).",
    )
    fit.add_argument(
        "--queries",
        required=True,
        help="fit queries: .txt (one per line) or .jsonl ('instruction'), or 'builtin' (train split)",
    )
    fit.add_argument(
        "--n", type=int, default=None, help="use only the first N queries (default: all)"
    )
    fit.add_argument(
        "--out",
        required=True,
        help="output directory: alignez.safetensors, alignez.json, pairs.jsonl",
    )
    add_arguments(fit, AlignEZConfig)
    gen = inner.add_parser(
        "generate", parents=parents, help="answer instructions with an AlignEZ edit applied"
    )
    gen.add_argument("--edit", required=True, help="directory written by 'icon2-lens alignez fit'")
    gen.add_argument(
        "--instructions",
        required=True,
        help=".txt or .jsonl instructions, or 'builtin' (the held-out split)",
    )
    gen.add_argument(
        "--n", type=int, default=None, help="use only the first N instructions (default: all)"
    )
    gen.add_argument("--out", required=True, help="answers, .jsonl")
    gen.add_argument(
        "--strength", type=float, default=None, help="strength s (default: the edit's own)"
    )
    add_arguments(gen, Decoding, only=("max_new_tokens",))
    add_arguments(gen, AlignEZConfig, only=("batch_size",))
    for q in (fit, gen):
        add_model(q)
        add_run_options(q, png=False)
    return p


def _texts(spec: str, split: str, n: int | None) -> list[str]:
    texts = load_instructions(split) if spec == "builtin" else read_instruction_file(spec)
    if n is not None:
        if n < 1:
            raise ConfigError(
                f"--n must be at least 1, got {n}", "pass a positive count or leave it out"
            )
        texts = texts[:n]
    return texts


def _fit(args) -> Result:
    config = from_args(AlignEZConfig, args)
    queries = _texts(args.queries, "train", args.n)
    out = out_dir(args.out)
    model = load(args.model)
    edit = fit_alignez(model, queries, config, progress=not args.no_progress, out=out)
    return Result(
        repr(edit),
        {
            "pairs": edit.stats["n_pairs"],
            "dropped": edit.stats["dropped"],
            "layers": list(edit.layers),
        },
        {"out": str(Path(out).resolve())},
    )


def _generate(args) -> Result:
    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise ConfigError(
            f"--out must be a .jsonl file, got {out}",
            "name the output e.g. runs/alignez_answers.jsonl",
        )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory", "name a .jsonl file")
    check_writable(out.parent, flag="--out")
    instructions = _texts(args.instructions, "heldout", args.n)
    model = load(args.model)
    edit = load_alignez(args.edit, model)
    prompts = [render_chat(model.tokenizer, d) for d in instructions]
    editor = AlignEZEditor(model, edit, prompts, strength=args.strength, batch_size=args.batch_size)
    gens = generate(
        model,
        prompts,
        Decoding(max_new_tokens=args.max_new_tokens),
        batch_size=args.batch_size,
        progress=not args.no_progress,
        editors=[editor],
    )
    write_jsonl(
        out,
        [
            {
                "index": i,
                "instruction": d,
                "response": g.text,
                "finished": g.finished,
                "n_tokens": len(g.token_ids),
                "alignez_strength": editor.strength,
                "alignez_help_kept": int(editor.help_kept[i]),
                "alignez_harm_kept": int(editor.harm_kept[i]),
                "alignez_layers": list(edit.layers),
                "alignez_edit": str(Path(args.edit).resolve()),
            }
            for i, (d, g) in enumerate(zip(instructions, gens))
        ],
    )
    return Result(
        summary={"answers": len(gens), "strength": editor.strength},
        outputs={"out": str(out.resolve())},
    )


def run(args) -> Result:
    return _fit(args) if args.alignez_command == "fit" else _generate(args)
