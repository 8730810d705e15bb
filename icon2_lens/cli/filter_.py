"""``icon2-lens filter``: score instructions by inherent consistency and keep the best."""

from pathlib import Path

from icon2_lens._config import ConfigError
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.consistency.filter import KEPT_FILE, MARKER, FilterConfig, run_filter
from icon2_lens.directions.folder import load_extraction
from icon2_lens.instructions.builtin import read_instruction_file

from ._common import (
    Result,
    add_config_option,
    add_directions,
    add_model,
    add_run_options,
    load,
    out_dir,
)

__all__ = ["register", "run", "CONFIG_CLASSES"]

CONFIG_CLASSES = (FilterConfig,)


def register(sub, parents):
    p = sub.add_parser(
        "filter",
        parents=parents,
        help="score instructions by inherent consistency and keep the best",
    )
    add_model(p)
    p.add_argument("--instructions", required=True, help=".jsonl ('instruction') or .txt file")
    add_directions(p)
    add_arguments(p, FilterConfig)
    p.add_argument("--out", default="runs/filter", help="output directory")
    add_run_options(p)
    add_config_option(p, "filter")
    return p


def run(args) -> Result:
    config = from_args(FilterConfig, args)
    instructions = read_instruction_file(args.instructions)
    out = out_dir(args.out)
    if (out / MARKER).is_file():
        raise ConfigError(
            f"{out} already holds a filter result", "choose another --out or delete it"
        )
    model = load(args.model)
    sets, intervals = load_extraction(args.directions, model=model)
    kept = run_filter(
        model,
        instructions,
        sets,
        intervals,
        config,
        out,
        progress=not args.no_progress,
        png=not args.no_png,
    )
    return Result(
        (Path(out) / "examples.md").read_text(encoding="utf-8"),
        {"kept": len(kept), "scored": len(instructions)},
        {"kept": str((Path(out) / KEPT_FILE).resolve()), "out": str(Path(out).resolve())},
    )
