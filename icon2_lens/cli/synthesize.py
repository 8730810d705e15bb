"""``icon2-lens synthesize``: Magpie-style self-synthesis of instructions, then cleaning."""

from pathlib import Path

from icon2_lens._config import ConfigError
from icon2_lens._files import check_writable
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.instructions.synthesize import (
    SynthesisConfig,
    synthesize_instructions,
    write_synthesis,
)

from ._common import (
    Result,
    add_config_option,
    add_model,
    add_run_options,
    load,
)

__all__ = ["register", "run", "CONFIG_CLASSES"]

CONFIG_CLASSES = (SynthesisConfig,)


def register(sub, parents):
    p = sub.add_parser(
        "synthesize",
        parents=parents,
        help="Magpie-style self-synthesis of instructions, then cleaning",
        description="Feed the chat template up to the user's turn, sample what the model writes "
        "there, clean it. Raw samples go to <out>.raw.jsonl (resumable), the counts per "
        "cleaning step to <out>.report.json.",
    )
    add_model(p)
    add_arguments(p, SynthesisConfig)
    p.add_argument("--out", default="runs/instructions.jsonl", help="cleaned instructions (.jsonl)")
    add_run_options(p, png=False)
    add_config_option(p, "synthesize")
    return p


def run(args) -> Result:
    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise ConfigError(
            f"--out must be a .jsonl file, got {out}",
            "name the output e.g. runs/instructions.jsonl",
        )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory", "name a .jsonl file")
    check_writable(out.parent, flag="--out")
    config = from_args(SynthesisConfig, args)
    model = load(args.model)
    raw_path, report_path = out.with_suffix(".raw.jsonl"), out.with_suffix(".report.json")
    raw, report = synthesize_instructions(
        model, config, raw_path=raw_path, progress=not args.no_progress
    )
    write_synthesis(report, config, len(raw), instructions=out, summary=report_path)
    return Result(
        report.summary(),
        {"raw samples": len(raw), "instructions": len(report.kept)},
        {
            "out": str(out.resolve()),
            "raw samples": str(raw_path.resolve()),
            "report": str(report_path.resolve()),
        },
    )
