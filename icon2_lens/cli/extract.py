"""``icon2-lens extract``: per-layer preference directions and their diagnostics."""

import time
from pathlib import Path

from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.directions.criteria import load_criteria_file
from icon2_lens.directions.extract import ExtractConfig, run_extraction
from icon2_lens.instructions.builtin import read_instruction_file

from ._common import Result, add_config_option, add_model, add_run_options, load, out_dir

__all__ = ["register", "run", "CONFIG_CLASSES"]

CONFIG_CLASSES = (ExtractConfig,)


def register(sub, parents):
    p = sub.add_parser(
        "extract",
        parents=parents,
        help="extract per-layer preference directions and diagnostics",
        description="Contrastive system prompts per criterion → last-token residuals at every layer → one unit "
        "direction per layer, diagnosed on held-out instructions.",
    )
    add_model(p)
    add_arguments(p, ExtractConfig)
    p.add_argument(
        "--criteria-file",
        default=None,
        help="TOML/JSON file of user-defined criteria (name, positive, negative, description); "
        "replaces --criteria",
    )
    p.add_argument(
        "--instructions",
        default=None,
        help="training instructions (.txt, one per line, or .jsonl with 'instruction'); "
        "default: the built-in train split",
    )
    p.add_argument(
        "--heldout",
        default=None,
        help="held-out instructions file (default: the built-in held-out split)",
    )
    p.add_argument("--out", default="runs/extract", help="output directory (default runs/extract)")
    p.add_argument("--no-figures", action="store_true", help="skip all figures")
    add_run_options(p)
    add_config_option(p, "extract")
    return p


def run(args) -> Result:
    config = from_args(ExtractConfig, args)
    criteria = load_criteria_file(args.criteria_file) if args.criteria_file else None
    train = read_instruction_file(args.instructions) if args.instructions else None
    heldout = read_instruction_file(args.heldout) if args.heldout else None
    out = out_dir(args.out)
    t0 = time.perf_counter()
    model = load(args.model)
    result = run_extraction(
        model,
        criteria,
        config=config,
        out=out,
        train=train,
        heldout=heldout,
        figures=not args.no_figures,
        png=not args.no_png,
        progress=not args.no_progress,
    )
    cols = [
        "criterion",
        "best_layer",
        "best_layer_single_acc",
        "interval",
        "interval_paired_acc",
        "interval_min_paired_acc",
        "interval_single_acc",
    ]
    table = result.summary()[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}")
    return Result(
        table,
        {
            "model": model.cfg.model_name,
            "method": config.method,
            "site": config.site,
            "seconds": round(time.perf_counter() - t0),
        },
        {"out": str(Path(out).resolve())},
    )
