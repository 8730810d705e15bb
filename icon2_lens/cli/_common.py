"""What every command shares: the parser class, common options, results, --config sections."""

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icon2_lens._config import ConfigError, config_fields, from_dict
from icon2_lens._files import check_writable

__all__ = [
    "Parser",
    "Result",
    "add_model",
    "add_allow_download",
    "add_directions",
    "add_run_options",
    "add_config_option",
    "apply_config",
    "load",
    "render",
    "out_dir",
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: <what> — <how to fix it>``, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message, f"see '{self.prog} --help'")


@dataclass
class Result:
    """What a command prints to stdout, in one shape for every command.

    Attributes:
        text: A table or text block shown first (``None``: nothing).
        summary: Key figures, printed one ``key: value`` line each (and in ``--json``).
        outputs: What was written where.
    """

    text: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def render(command: str, result: Result, *, as_json: bool) -> str:
    """The stdout of a command: ``text``, then ``key: value`` lines, then ``written: path`` lines;
    with ``as_json`` one JSON object ``{"command", "summary", "outputs"}``."""
    if as_json:
        return json.dumps(
            {"command": command, "summary": result.summary, "outputs": result.outputs},
            ensure_ascii=False,
            default=str,
        )
    parts = [result.text.rstrip()] if result.text else []
    lines = [f"{k}: {v}" for k, v in result.summary.items()]
    lines += [
        f"written: {v}" + (f" ({k})" if k not in ("out", "output") else "")
        for k, v in result.outputs.items()
    ]
    if lines:
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def add_directions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--directions", default="runs/extract", help="output directory of 'icon2-lens extract'"
    )


def add_model(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--allow-download``."""
    parser.add_argument(
        "--model",
        default=None,
        help="embedded model key (smollm2-135m [default], gemma3-270m), HF model directory or hub id",
    )
    add_allow_download(parser)


def add_allow_download(parser: argparse.ArgumentParser) -> None:
    """``--allow-download``: let hub ids download (the main function sets ``$ICON2_LENS_ALLOW_DOWNLOAD``)."""
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let a hub id be downloaded from the Hugging Face Hub (without it, hub ids are read "
        "from the local Hugging Face cache only); the same as ICON2_LENS_ALLOW_DOWNLOAD=1",
    )


def add_run_options(parser: argparse.ArgumentParser, *, png: bool = True) -> None:
    """``--no-progress`` and ``--no-png`` (accepted by every command; ``png=False``: it writes no figures)."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    help_png = (
        "write HTML figures only"
        if png
        else "accepted for a uniform command line; this command writes no figures"
    )
    parser.add_argument("--no-png", action="store_true", help=help_png)


def add_config_option(parser: argparse.ArgumentParser, section: str) -> None:
    """``--config F``: take this command's defaults from section ``[section]`` (and ``model``/``seed``)
    of a run or experiment TOML file; flags given on the command line still win."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help=f"take defaults from the [{section}] section (and model, seed) of a run or experiment "
        "config such as configs/default.toml; flags given here still win",
    )
    parser.set_defaults(_config_section=section)


def apply_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, classes: Sequence[type]
) -> bool:
    """Set ``parser``'s defaults from ``args.config``'s section for ``classes``; ``True`` if any were set."""
    from icon2_lens.runs.config import read_toml

    path, section = getattr(args, "config", None), getattr(args, "_config_section", None)
    if not path or not section:
        return False
    data = read_toml(path)
    raw = data.get(section, {})
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: [{section}] must be a table", "write it as [section] with key = value lines"
        )
    values: dict[str, Any] = dict(raw)
    has_seed = any(f.name == "seed" for cls in classes for f in config_fields(cls))
    for key in ("model", "seed"):
        if key in data and key not in values and (key == "model" or has_seed):
            values[key] = data[key]
    defaults: dict[str, Any] = {}
    if "model" in values:
        defaults["model"] = str(values.pop("model"))
    names = {f.name for cls in classes for f in config_fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)} in [{section}]",
            "remove them or fix their spelling (see 'icon2-lens config show')",
        )
    for cls in classes:
        mine = {k: v for k, v in values.items() if k in {f.name for f in config_fields(cls)}}
        instance = from_dict(cls, mine, where=f"{section}.")
        defaults.update({k: getattr(instance, k) for k in mine})
    parser.set_defaults(**defaults)
    return True


def load(name: str | None):
    """The model a command works on, with gradients off for the rest of the process."""
    import torch
    from transformers.utils import logging as hf_logging

    from icon2_lens.model.load import load_model

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise on a terminal and in logs
    torch.set_grad_enabled(False)
    return load_model(name)


def out_dir(path: str) -> Path:
    """``--out`` as a folder, checked before any work: an error if it or a parent is a file or if it
    cannot be written (:func:`~icon2_lens._files.check_writable`)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {path} is a file", "pass a directory")
    check_writable(p, flag="--out")
    return p


def stdout(text: str) -> None:
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
