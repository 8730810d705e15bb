"""``icon2-lens sweep``: sweep γ and layer intervals; pick a setting by the documented rule."""

import dataclasses
import json
import random
from pathlib import Path

import pandas as pd

from icon2_lens._config import ConfigError
from icon2_lens._files import read_json, read_jsonl, write_json, write_jsonl
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.consistency.scores import score_consistency
from icon2_lens.directions.folder import load_extraction
from icon2_lens.figures import write_figures_or_warn
from icon2_lens.instructions.builtin import load_instructions, read_instruction_file
from icon2_lens.pairs.sweep import (
    SweepConfig,
    choose_setting,
    plot_sweep,
    run_sweep,
    summarize_sweep,
)

from ._common import Result, add_directions, add_model, add_run_options, load, out_dir

__all__ = ["register", "run"]


def register(sub, parents):
    p = sub.add_parser(
        "sweep",
        parents=parents,
        help="sweep γ and layer intervals; pick a setting by the documented rule",
    )
    add_model(p)
    add_directions(p)
    p.add_argument(
        "--instructions",
        default=None,
        help="instructions to sweep on (default: the built-in held-out split)",
    )
    add_arguments(p, SweepConfig)
    p.add_argument(
        "--rechoose",
        action="store_true",
        help="re-apply the selection rule (this call's rule options) to the responses already in --out",
    )
    p.add_argument("--out", default="runs/sweep", help="output directory")
    add_run_options(p)
    return p


def _result(res, out: Path, *, png: bool) -> Result:
    write_json(
        {
            "by_gamma": res.by_gamma.to_dict(orient="records"),
            "pairs": res.pairs.to_dict(orient="records"),
            "choice": res.choice,
            "rule": res.rule,
        },
        out / "sweep.json",
    )
    write_figures_or_warn({"sweep": plot_sweep(res)}, out, png=png)
    return Result(
        res.by_gamma.to_string(index=False, float_format=lambda x: f"{x:.3f}"),
        {"choice": json.dumps(res.choice)},
        {"out": str(out.resolve())},
    )


def _rechoose(args, out: Path) -> Result:
    path, meta = out / "responses.jsonl", out / "sweep.json"
    if not path.is_file() or not meta.is_file():
        raise ConfigError(
            f"--rechoose needs an earlier sweep in {out} (responses.jsonl and sweep.json)",
            "run the sweep first, or point --out at its folder",
        )
    responses = pd.DataFrame(read_jsonl(path))
    responses["gamma"] = responses["gamma"].astype(float)  # JSON writes 2.0 as 2
    res = summarize_sweep(responses)
    old = read_json(meta).get("rule", {})
    config = from_args(SweepConfig, args)
    # min_win and min_effect come from this call; the fluency bounds keep the sweep's own unless given here
    defaults = SweepConfig()
    kept = {
        k: old[k]
        for k in ("max_degenerate", "nll_tolerance")
        if k in old and getattr(config, k) == getattr(defaults, k)
    }
    config = dataclasses.replace(config, **kept)
    # how the answers were made comes from the sweep; how to choose from this call
    res.rule = {**config.rule(), **{k: old[k] for k in ("read", "positions", "unit") if k in old}}
    res.choice = choose_setting(res, config)
    return _result(res, out, png=not args.no_png)


def run(args) -> Result:
    out = out_dir(args.out)
    if args.rechoose:
        return _rechoose(args, out)
    config = from_args(SweepConfig, args)
    model = load(args.model)
    sets, _ = load_extraction(args.directions, model=model)
    pool = (
        read_instruction_file(args.instructions)
        if args.instructions
        else load_instructions("heldout")
    )
    if config.n_instructions < len(pool):
        pool = [
            pool[i]
            for i in sorted(
                random.Random(config.seed).sample(range(len(pool)), config.n_instructions)
            )
        ]
    scores = score_consistency(model, pool, list(sets.values()), progress=False)
    items = [KeptInstruction(i, d, c) for i, (d, c) in enumerate(zip(pool, scores.best_criterion))]
    res = run_sweep(model, items, sets, config, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "responses.jsonl", res.responses.to_dict(orient="records"))
    return _result(res, out, png=not args.no_png)
