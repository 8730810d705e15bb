"""``icon2-lens config show``: the effective configuration of a run or an experiment, with every help text."""

import json

from icon2_lens._config import ConfigError
from icon2_lens.runs.config import ExperimentConfig, RunConfig, read_toml, to_toml

from ._common import Result

__all__ = ["register", "run"]

_KINDS = {"run": RunConfig, "experiment": ExperimentConfig}
_EXPERIMENT_ONLY = {"experiment", "baselines", "alignez", "eval"}


def register(sub, parents):
    p = sub.add_parser(
        "config", parents=parents, help="show the effective configuration of a run or an experiment"
    )
    inner = p.add_subparsers(dest="config_command", required=True, metavar="{show}")
    show = inner.add_parser(
        "show",
        parents=parents,
        help="print the effective configuration (TOML, with help)",
        description="The configuration a run or experiment would use: the TOML file's values "
        "over every setting's default, each line with its help text.",
    )
    show.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="a run or experiment TOML file (default: none, only the defaults)",
    )
    show.add_argument(
        "--kind",
        default="auto",
        choices=["auto", *_KINDS],
        help="run or experiment (auto: experiment if the file has an experiment-only section)",
    )
    show.add_argument("--format", default="toml", choices=["toml", "json"], help="output format")
    return p


def run(args) -> Result:
    data = read_toml(args.config) if args.config else {}
    kind = args.kind
    if kind == "auto":
        kind = "experiment" if _EXPERIMENT_ONLY & set(data) else "run"
    try:
        cfg = _KINDS[kind].from_dict(data)
    except ConfigError as e:
        raise ConfigError(
            f"{args.config or 'the defaults'} as a {kind} configuration: {e.what}", e.fix
        ) from e
    text = (
        to_toml(cfg)
        if args.format == "toml"
        else json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
    )
    return Result(
        None if args.json else text, summary={"config": cfg.to_dict()} if args.json else {}
    )
