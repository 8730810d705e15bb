"""``icon2-lens pairs``: steered chosen/rejected pairs for kept instructions (TRL format)."""

import json
from pathlib import Path

from icon2_lens._files import write_json
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.consistency.filter import read_kept
from icon2_lens.directions.folder import load_extraction
from icon2_lens.pairs.gate import training_pairs, training_pairs_path
from icon2_lens.pairs.icon2 import PairConfig, generate_pairs
from icon2_lens.pairs.margins import pair_margins

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

CONFIG_CLASSES = (PairConfig,)


def register(sub, parents):
    p = sub.add_parser(
        "pairs",
        parents=parents,
        help="steered chosen/rejected pairs for kept instructions (TRL format)",
    )
    add_model(p)
    p.add_argument("--kept", required=True, help="kept.jsonl written by 'icon2-lens filter'")
    add_directions(p)
    add_arguments(p, PairConfig)
    p.add_argument(
        "--out",
        default="runs/pairs",
        help="output directory (resumed if it holds pairs of these settings)",
    )
    add_run_options(p, png=False)
    add_config_option(p, "pairs")
    return p


def run(args) -> Result:
    config = from_args(PairConfig, args)
    kept = read_kept(args.kept)
    out = out_dir(args.out)
    model = load(args.model)
    sets, intervals = load_extraction(args.directions, model=model)
    res = generate_pairs(
        model, kept, sets, config, intervals=intervals, out=out, progress=not args.no_progress
    )
    margins = pair_margins(model, res.records, sets)
    write_json(
        {"counts": res.counts, "margins": margins, "config": config.settings()},
        Path(out) / "summary.json",
    )
    train = training_pairs(res.records, config, out)
    shown = {k: v for k, v in margins.items() if k != "judge"}
    return Result(
        json.dumps({"counts": res.counts, "margins": shown, "train": len(train)}, indent=2),
        {"pairs": res.counts["pairs"], "train": len(train), "judge": margins.get("judge", "")},
        {
            "pairs": str((Path(out) / "pairs.jsonl").resolve()),
            "train": str(training_pairs_path(out).resolve()),
            "out": str(Path(out).resolve()),
        },
    )
