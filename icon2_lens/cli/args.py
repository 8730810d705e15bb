"""Command-line flags derived from the settings dataclasses: one flag per field, its default the field's.

Only the command line knows argparse; the settings classes (:mod:`icon2_lens._config`) only say,
in their field metadata, how a field is spelled as a flag (``flag``, ``aliases``, ``sep``,
``choices``, ``cli``).

Example:
    >>> import argparse
    >>> from icon2_lens.pairs.icon2 import PairConfig
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser, PairConfig)
    >>> from_args(PairConfig, parser.parse_args(["--gamma-pos", "0.05", "--layers", "criterion"])).layers is None
    True
"""

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

from icon2_lens._config import (
    args_of,
    build,
    config_fields,
    default_of,
    describe_type,
    field_type,
    format_value,
    help_of,
    is_union,
    parse_layer_spec,
    sequence_item,
    strip_none,
)

__all__ = ["DERIVED_FLAGS", "flag_of", "add_arguments", "from_args"]

DERIVED_FLAGS = "_icon2_derived_flags"
"""Attribute of a parser listing ``(dest, settings class, field name)`` for every derived flag."""


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field (``--n-heldout``; ``--no-center`` for a ``True`` boolean)."""
    if f.metadata.get("flag"):
        return str(f.metadata["flag"])
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def _parser_of(cls: type, f: dataclasses.Field) -> Callable[[str], Any]:
    tp, _ = strip_none(field_type(cls, f.name))
    none_word = f.metadata.get("layers")

    def parse(text: str) -> Any:
        if none_word is not None:
            return parse_layer_spec(text, none_word)
        item = sequence_item(tp)
        if item is not None:
            parts = [p.strip() for p in text.split(f.metadata.get("sep", ",")) if p.strip()]
            return tuple(_scalar(item, p) for p in parts)
        return _scalar(tp, text)

    parse.__name__ = describe_type(tp) if none_word is None else "layer selection"
    return parse


def _scalar(tp: Any, text: str) -> Any:
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if is_union(tp):  # int | float
        try:
            return int(text)
        except ValueError:
            return float(text)
    return text


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    title: str | None = None,
) -> None:
    """Add one flag per field of ``cls`` (its default is the field's default; help from metadata).

    ``exclude`` leaves fields out; ``only`` keeps just the fields it names.

    The parser remembers which flags were derived (:data:`DERIVED_FLAGS`), so a test can check
    that every flag's default equals its field's.
    """
    exclude = set(exclude)
    keep = set(only) if only is not None else None
    group = parser.add_argument_group(title) if title else parser
    derived = getattr(parser, DERIVED_FLAGS, None)
    if derived is None:
        derived = []
        setattr(parser, DERIVED_FLAGS, derived)
    exclusive: dict[str, Any] = {}
    for f in config_fields(cls):
        if (
            f.name in exclude
            or not f.metadata.get("cli", True)
            or (keep is not None and f.name not in keep)
        ):
            continue
        default = default_of(f)
        names = [flag_of(f), *f.metadata.get("aliases", ())]
        helptext = help_of(f).replace("%", "%%")
        where = group
        if f.metadata.get("exclusive"):
            key = f.metadata["exclusive"]
            if key not in exclusive:
                exclusive[key] = group.add_mutually_exclusive_group()
            where = exclusive[key]
        tp, _ = strip_none(field_type(cls, f.name))
        if tp is bool and f.metadata.get("layers") is None:
            action = "store_false" if default is True else "store_true"
            if default is True:
                helptext = f"turn off: {helptext}"
            where.add_argument(*names, dest=f.name, action=action, default=default, help=helptext)
        else:
            shown = (
                format_value(cls, f.name, default)
                if default is not None or f.metadata.get("layers")
                else "none"
            )
            shown = shown.replace("%", "%%")
            kwargs: dict[str, Any] = {
                "dest": f.name,
                "default": default,
                "help": f"{helptext} (default: {shown})",
                "type": _parser_of(cls, f),
            }
            choices = f.metadata.get("choices") or (
                list(args_of(tp)) if typing.get_origin(tp) is Literal else None
            )
            if choices:
                kwargs["choices"] = list(choices)
                kwargs.pop("type")
            where.add_argument(*names, **kwargs)
        derived.append((f.name, cls, f.name))


def from_args(
    cls: type, args: argparse.Namespace, *, exclude: Iterable[str] = (), **fixed: Any
) -> Any:
    """An instance of ``cls`` from parsed flags (fields in ``exclude`` keep their defaults)."""
    exclude = set(exclude)
    kwargs = {
        f.name: getattr(args, f.name)
        for f in config_fields(cls)
        if f.name not in exclude and f.metadata.get("cli", True) and hasattr(args, f.name)
    }
    kwargs.update(fixed)
    return build(cls, kwargs, fix="fix that option (see --help)")
