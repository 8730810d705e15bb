"""``icon2-lens eval``: answer held-out instructions with several systems and compare them with judges."""

from pathlib import Path

from icon2_lens._config import ConfigError
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.directions.folder import load_extraction
from icon2_lens.evaluate.judging import (
    EvalConfig,
    evaluate_systems,
    read_eval_records,
    results_frame,
)
from icon2_lens.evaluate.systems import SystemSpec, check_system, parse_system
from icon2_lens.judge.registry import make_judge
from icon2_lens.model.generate import Decoding
from icon2_lens.model.hooks import parse_layers

from ._common import Result, add_config_option, add_model, add_run_options, load, out_dir

__all__ = ["register", "run", "CONFIG_CLASSES"]

CONFIG_CLASSES = (EvalConfig,)


def register(sub, parents):
    p = sub.add_parser(
        "eval",
        parents=parents,
        help="answer held-out instructions with several systems and compare them with judges "
        "(win rate, length-controlled win rate, intervals)",
    )
    add_model(p)
    p.add_argument(
        "--system",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="a system to compare with the base (repeatable): model:PATH, alignez:DIR[@STRENGTH], "
        "steer:DIR@GAMMA@LAYERS, or a model path",
    )
    p.add_argument(
        "--instructions",
        default="builtin",
        help="'builtin' (the shipped held-out set with harmful requests) or a .jsonl with "
        "'instruction' and optional 'kind' (benign/harmful) or a .txt file",
    )
    p.add_argument(
        "--directions", default=None, help="extraction directory (needed by the inherent judge)"
    )
    p.add_argument(
        "--layers",
        default=None,
        help="layers the inherent judge averages over, e.g. 13-22 (default: each criterion's "
        "recommended interval from the extraction)",
    )
    add_arguments(p, EvalConfig)
    p.add_argument("--out", default="runs/eval", help="output directory")
    add_run_options(p, png=False)
    add_config_option(p, "eval")
    return p


def _systems(texts: list[str]) -> list[SystemSpec]:
    if not texts:
        raise ConfigError(
            "no --system to compare with the base",
            "name at least one, e.g. --system model:runs/x/dpo/model",
        )
    systems = [SystemSpec("base", "base")]
    for text in texts:
        name, sep, spec = text.partition("=")
        systems.append(parse_system(spec, name) if sep and ":" not in name else parse_system(text))
    for system in systems:
        check_system(system)
    return systems


def run(args) -> Result:
    config = from_args(EvalConfig, args)
    systems = _systems(args.system)
    records = read_eval_records(args.instructions, config.n_benign, config.n_harmful)
    out = out_dir(args.out)
    if args.directions and not Path(args.directions).is_dir():
        raise ConfigError(
            f"--directions {args.directions} is not a directory",
            "pass the output folder of 'icon2-lens extract'",
        )
    model = load(args.model)
    for system in systems:  # steering systems fit this model: checked before anything answers
        if system.kind == "steer":
            load_extraction(system.path, model=model)
            parse_layers(system.layers, model.cfg.n_layers)
    sets = layers = None
    if args.directions:
        sets, intervals = load_extraction(args.directions, model=model)
        layers = parse_layers(args.layers, model.cfg.n_layers) if args.layers else intervals
    judges = [make_judge(name, model, direction_sets=sets, layers=layers) for name in config.judges]
    result = evaluate_systems(
        model,
        systems,
        records,
        judges,
        out=out,
        reference=config.reference,
        decoding=Decoding(max_new_tokens=config.max_new_tokens),
        batch_size=config.batch_size,
        seed=config.seed,
        progress=not args.no_progress,
    )
    return Result(
        results_frame(result).to_string(index=False),
        {"instructions": result["n"]},
        {"eval": str((Path(out) / "eval.json").resolve()), "out": str(Path(out).resolve())},
    )
