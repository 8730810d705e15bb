"""The command line: ``icon2-lens <command> ...``, one module per command behind a short dispatcher.

Every command module has ``register(subparsers)`` (its options, most of them derived from the
stage's settings dataclass, so each default is the field's default) and ``run(args) -> Result``.
The dispatcher gives every command the same conventions:

* results go to stdout in one shape (a table or text, ``key: value`` lines, ``written: path``
  lines; ``--json`` prints one JSON object instead); logs go to stderr;
* user errors (bad input, bad config, missing files) print one line
  ``error: <what is wrong> — <how to fix it>`` and exit with code 2; ``--debug`` shows the
  traceback instead; an interrupted command exits with 130 and resumes when re-run;
* nothing is downloaded from the Hugging Face Hub and no telemetry is sent, unless
  ``--allow-download`` (or ``ICON2_LENS_ALLOW_DOWNLOAD=1``) lets hub ids download
  (:mod:`icon2_lens._network`).

Reads: command-line arguments and the files they name. Writes: what each command writes (see
``icon2-lens <command> --help``); results to stdout, logs to stderr.
May import: every other subpackage (nothing imports this one).
"""

import argparse
import logging
import os
import re
import sys
from importlib import import_module

from icon2_lens._config import ConfigError
from icon2_lens._network import ALLOW_DOWNLOAD_ENV, apply_network_defaults

from ._common import Parser, render, stdout

__all__ = ["main", "build_parser", "COMMANDS"]

#: Command name -> its module (``icon2_lens.cli.<module>``), in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "prepare": "prepare",
    "extract": "extract",
    "synthesize": "synthesize",
    "filter": "filter_",
    "pairs": "pairs",
    "sweep": "sweep",
    "dpo": "dpo",
    "eval": "eval_",
    "alignez": "alignez",
    "audit": "audit",
    "export": "export",
    "import": "import_",
    "run": "run",
    "experiment": "experiment",
    "config": "config",
}

_NOISY = ("httpx", "urllib3", "choreographer", "kaleido", "transformers", "transformer_lens")


def _shared(*, defaults: bool = True) -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    # on the commands, a flag left out must not undo the same flag given before the command
    kw = {} if defaults else {"default": argparse.SUPPRESS}
    shared.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages (to stderr)", **kw
    )
    shared.add_argument("--debug", action="store_true", help="show the traceback of an error", **kw)
    shared.add_argument(
        "--json", action="store_true", help="print the result as one JSON object", **kw
    )
    return shared


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``parser.commands`` maps a name to its module and subparser)."""
    parser = Parser(
        parents=[_shared()],
        prog="icon2-lens",
        description="Preference directions and self-synthesized DPO data from a "
        "model's own residual stream (Icon², AlignEZ) on TransformerLens.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    shared = _shared(defaults=False)
    parser.commands = {}
    for name, module_name in COMMANDS.items():
        module = import_module(f"{__name__}.{module_name}")
        parser.commands[name] = (module, module.register(sub, [shared]))
    return parser


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(str(text).split())
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
        text = f"{error.strerror or text}: {error.filename} — check the path and its permissions"
    elif isinstance(error, FileNotFoundError):
        text = f"{error.filename or text} does not exist — check the path"
    elif " — " not in text:
        text = _dash_fix(text)
    return f"error: {text}"


#: Verbs a library message's fix starts with after a colon ("…: pass the output directory …").
_FIX_VERBS = re.compile(
    r": (?=(?:pass|use|check|choose|shorten|lower|raise|run|re-run|delete|extract|set|name|give|"
    r"fill|drop|remove|write|add|fix|make|convert|install|allow|rename|move|select|keep)\b)"
)


def _dash_fix(text: str) -> str:
    """The library's "what; how to fix it" (or "what: <verb> …") as "what — how to fix it"."""
    if "; " in text:
        return text.replace("; ", " — ", 1)
    found = list(_FIX_VERBS.finditer(text))
    if found:
        at = found[-1]
        return text[: at.start()] + " — " + text[at.end() :]
    return text


def main(argv: list[str] | None = None) -> int:
    """Run ``icon2-lens`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        module, subparser = parser.commands[args.command]
        if getattr(module, "CONFIG_CLASSES", None) and getattr(args, "config", None):
            from ._common import apply_config

            if apply_config(subparser, args, module.CONFIG_CLASSES):
                args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            stream=sys.stderr,
            format="%(levelname)s %(name)s: %(message)s",
        )
        for noisy in _NOISY:
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if getattr(args, "allow_download", False):
            os.environ[ALLOW_DOWNLOAD_ENV] = "1"  # read by every model load of this command
        apply_network_defaults()  # before any Hugging Face library is imported
        result = module.run(args)
        if os.environ.get("RANK", "0") == "0":  # under torchrun/accelerate: one report, from rank 0
            stdout(render(args.command, result, as_json=args.json))
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        out = getattr(args, "out", None)
        kept = f"what is finished in {out} is kept; " if out else ""
        sys.stderr.write(f"error: interrupted — {kept}run the same command again to resume\n")
        return 130
    except (ConfigError, ValueError, KeyError, OSError) as e:
        if debug:
            raise
        sys.stderr.write(_one_line(e) + "\n")
        return 2
    except Exception as e:  # noqa: BLE001 - anything else still gets one line; --debug shows where
        if debug:
            raise
        sys.stderr.write(
            f"{_one_line(e)} ({type(e).__name__}) — run again with --debug to see the traceback\n"
        )
        return 2
