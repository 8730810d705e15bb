"""Settings dataclasses as the one source of every default: fields with help text, read from TOML and
command lines, written back to JSON. This module imports nothing of icon2_lens.

A settings class declares each knob once, with :func:`option`::

    @dataclass(frozen=True, kw_only=True)
    class ToyConfig:
        n: int = option(8, help="how many")
        layers: tuple[int, ...] | None = option(None, help="layers to read", layers="all")

From that one declaration come the TOML section (:func:`from_dict` checks names and types),
the command-line flags (:mod:`icon2_lens.cli.args`, the flag default *is* the field default)
and the recorded JSON (:func:`to_dict`). Layer selections are spelled as in the
CLI (``"13-22"``, ``"3,5,-1"``, or a word such as ``"all"`` for ``None``) or as lists of ints.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Toy:
    ...     n: int = option(8, help="how many")
    ...     layers: tuple[int, ...] | None = option(None, help="layers", layers="all")
    >>> from_dict(Toy, {"n": 3, "layers": "2-4"})
    Toy(n=3, layers=(2, 3, 4))
    >>> to_dict(Toy())
    {'n': 8, 'layers': None}
    >>> from_dict(Toy, {"m": 1})
    Traceback (most recent call last):
    ...
    icon2_lens._config.ConfigError: unknown config key 'm' — use one of: n, layers
"""

import dataclasses
import difflib
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Literal, Union  # noqa: TID251 - Union is inspected in annotations, not written

__all__ = [
    "ConfigError",
    "option",
    "help_of",
    "config_fields",
    "field_type",
    "coerce",
    "from_dict",
    "to_dict",
    "narrow",
    "parse_layer_spec",
    "format_layers",
    "format_value",
    "documented",
    "unknown_key",
    "build",
    "default_of",
    "strip_none",
    "sequence_item",
    "describe_type",
    "args_of",
    "is_union",
]

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A bad setting: ``what`` is wrong and ``fix`` says how to put it right (``"what — fix"``)."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what} — {fix}" if fix else what)


def option(
    default: Any = _MISSING,
    *,
    help: str,  # noqa: A002 - the name TRL and argparse use
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    layers: str | None = None,
    sep: str = ",",
    choices: Sequence[str] | None = None,
    exclusive: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its help text and how it appears on the command line.

    Args:
        default: The default value (the one place it is written down).
        help: What the setting does, one line (shown by ``--help`` and ``config show``).
        factory: A default factory instead of ``default``.
        flag: Command-line flag name (default ``--<name-with-dashes>``; booleans that default to
            ``True`` become ``--no-<name>``).
        aliases: More flag names, e.g. a short historical one (``--lr``).
        layers: The field is a layer selection; this word spells ``None`` (e.g. ``"all"``).
        sep: Separator of a list field's items on the command line.
        choices: The values a string field may take (its class validates them too; ``Literal``
            annotations give choices without this).
        exclusive: Fields naming the same group cannot be given together on the command line.
        cli: Offer the field as a flag (``False`` keeps it to configuration files).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "aliases": tuple(aliases),
        "layers": layers,
        "sep": sep,
        "choices": tuple(choices) if choices else None,
        "exclusive": exclusive,
        "cli": cli,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def documented(cls: type) -> type:
    """Class decorator: append an ``Attributes:`` section built from the fields' help texts.

    The help text is written once, in :func:`option`; this makes ``help(cls)`` and the API docs
    show it too.
    """
    lines = [f"        {f.name}: {help_of(f)}" for f in config_fields(cls) if help_of(f)]
    doc = (cls.__doc__ or "").rstrip()
    cls.__doc__ = doc + "\n\n    Attributes:\n" + "\n".join(lines) + "\n"
    return cls


def help_of(f: dataclasses.Field) -> str:
    """The help text of a field (empty if it was declared without :func:`option`)."""
    return str(f.metadata.get("help", ""))


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The init fields of a settings class, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.init]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of field ``name`` of ``cls``."""
    return _hints(cls)[name]


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (its factory called when it has one)."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


# ---------------------------------------------------------------------------------------------
# Types


def args_of(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def strip_none(tp: Any) -> tuple[Any, bool]:
    """``(tp without None, whether None is allowed)``."""
    if is_union(tp):
        args = [a for a in args_of(tp) if a is not type(None)]
        optional = len(args) < len(args_of(tp))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), optional  # noqa: UP007
    return tp, False


def sequence_item(tp: Any) -> Any | None:
    """The item type of ``tuple[X, ...]`` / ``Sequence[X]``, else ``None``."""
    if typing.get_origin(tp) in (tuple, list, abc.Sequence):
        args = args_of(tp)
        return args[0] if args else Any
    return None


def describe_type(tp: Any) -> str:
    if tp is bool:
        return "a boolean (true or false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in args_of(tp))
    item = sequence_item(tp)
    if item is not None:
        return f"a list of {describe_type(item).removeprefix('a ').removeprefix('an ')}s"
    if is_union(tp):
        return " or ".join(describe_type(a) for a in args_of(tp))
    return getattr(tp, "__name__", str(tp))


def parse_layer_spec(spec: str, none_word: str | None = None) -> tuple[int, ...] | None:
    """A layer selection written as text: ``"10-19"``, ``"3,5,-1"``, ``"2-4,-1"``; ``none_word`` → ``None``.

    The layers come back sorted and distinct. Negative indices count from the end; they are
    resolved against a model where the layers are used. ``"all"`` means ``None`` when
    ``none_word`` is ``"all"``.

    Example:
        >>> parse_layer_spec("4,2-3,3"), parse_layer_spec("criterion", "criterion")
        ((2, 3, 4), None)
        >>> parse_layer_spec("2-4,-1")
        (-1, 2, 3, 4)
    """
    text = spec.strip()
    if none_word is not None and text.lower() == none_word:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            lo, sep, hi = part.partition("-") if not part.startswith("-") else ("", "", "")
            if sep and lo:
                if int(hi) < int(lo):
                    raise ConfigError(
                        f"the layer range {part!r} runs backwards",
                        f"write the lower layer first: '{int(hi)}-{int(lo)}'",
                    )
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ConfigError:
        raise
    except ValueError:
        words = f" or {none_word!r}" if none_word else ""
        raise ConfigError(
            f"cannot read layer selection {spec!r}",
            f"use 'A-B' ranges and comma-separated indices such as '10-19' or '3,5,-1'{words}",
        ) from None
    if not out:
        raise ConfigError(f"the layer selection {spec!r} is empty", "name at least one layer")
    return tuple(sorted(set(out)))


def format_layers(layers: Sequence[int] | None, none_word: str | None = None) -> str:
    """The shortest text :func:`parse_layer_spec` reads back as ``layers``.

    Example:
        >>> format_layers((13, 14, 15, 16)), format_layers((1, 3)), format_layers(None, "all")
        ('13-16', '1,3', 'all')
    """
    if layers is None:
        return none_word or ""
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)) and layers[0] >= 0:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(x) for x in layers)


def coerce(cls: type, name: str, value: Any, *, where: str = "") -> Any:
    """``value`` (from TOML, JSON or a command line) as field ``name`` of ``cls`` expects it.

    Raises:
        ConfigError: The value has the wrong type or is not among a field's choices.
    """
    f = {x.name: x for x in config_fields(cls)}[name]
    tp, optional = strip_none(field_type(cls, name))
    key = f"{where}{name}"
    none_word = f.metadata.get("layers")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"setting {key!r} is {value!r}", f"use one of {', '.join(choices)}")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"setting {key!r} cannot be empty", f"give {describe_type(tp)}")
    if none_word is not None:
        if isinstance(value, str):
            return parse_layer_spec(value, none_word)
        if isinstance(value, (list, tuple)) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        ):
            return tuple(value)
        raise ConfigError(
            f"setting {key!r} must be a layer selection, got {value!r}",
            f"write e.g. '13-22', [13, 14, 15] or {none_word!r}",
        )
    return _coerce_type(tp, value, key)


def _coerce_type(tp: Any, value: Any, key: str) -> Any:
    bad = ConfigError(
        f"setting {key!r} must be {describe_type(tp)}, got {value!r}",
        "fix its value in the config file",
    )
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if typing.get_origin(tp) is Literal:
        if value in args_of(tp) and isinstance(value, str):
            return value
        raise ConfigError(
            f"setting {key!r} is {value!r}", f"use one of {', '.join(map(str, args_of(tp)))}"
        )
    item = sequence_item(tp)
    if item is not None:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce_type(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if is_union(tp):  # e.g. int | float
        for option_type in args_of(tp):
            try:
                return _coerce_type(option_type, value, key)
            except ConfigError:
                continue
        raise bad
    return value


def check_names(names: Sequence[str], known: Iterable[str], what: str) -> tuple[str, ...]:
    """``names`` as a tuple if each is one of ``known`` and none repeats, else a ``ValueError``.

    Example:
        >>> check_names(["a"], ("a", "b"), "letter")
        ('a',)
    """
    known = tuple(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown {what}(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names repeat: {list(names)}")
    return tuple(names)


def unknown_key(name: str, known: Iterable[str], where: str = "") -> ConfigError:
    """The error for an unknown setting ``name`` (with a did-you-mean hint)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(known)}"
    return ConfigError(
        f"unknown config key {where}{name!r}" if not where else f"unknown config key {where}{name}",
        hint,
    )


def from_dict(cls: type, data: Mapping[str, Any] | None, *, where: str = "", **fixed: Any) -> Any:
    """An instance of ``cls`` from a mapping of its fields (missing ones take their defaults).

    Args:
        cls: A settings dataclass.
        data: Field values, as read from TOML or JSON.
        where: Prefix for messages (e.g. ``"pairs."``).
        **fixed: Values set in code, overriding ``data``.

    Raises:
        ConfigError: An unknown key, a wrong type, or a value the class itself rejects.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"section {where.rstrip('.') or cls.__name__!r} must be a table, got {data!r}",
            "write it as [section] with key = value lines",
        )
    names = [f.name for f in config_fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key(key, names, where)
        kwargs[key] = coerce(cls, key, value, where=where)
    kwargs.update(fixed)
    return build(cls, kwargs, what=f"{where.rstrip('.') or cls.__name__}: ", fix="fix that value")


def build(cls: type, kwargs: Mapping[str, Any], *, what: str = "", fix: str) -> Any:
    """``cls(**kwargs)``, its ``ValueError``/``TypeError`` turned into a :class:`ConfigError` naming ``fix``."""
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        what_fix = str(e).split("; ", 1)  # the library's own "what; how to fix it" wins
        if len(what_fix) == 2:
            raise ConfigError(f"{what}{what_fix[0]}", what_fix[1]) from e
        raise ConfigError(f"{what}{e}", fix) from e


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Every init field of a settings instance as JSON-ready values (tuples become lists)."""
    return {f.name: _plain(getattr(obj, f.name)) for f in config_fields(type(obj))}


def narrow(obj: Any, cls: type) -> Any:
    """An instance of ``cls`` (a base class of ``type(obj)``) with ``obj``'s values of its fields."""
    return cls(**{f.name: getattr(obj, f.name) for f in config_fields(cls)})


def format_value(cls: type, name: str, value: Any) -> str:
    """A field's value as it would be typed on the command line (and shown in help texts)."""
    f = {x.name: x for x in config_fields(cls)}[name]
    none_word = f.metadata.get("layers")
    if none_word is not None:
        return format_layers(value, none_word)
    if isinstance(value, (list, tuple)):
        return f.metadata.get("sep", ",").join(str(v) for v in value)
    return str(value)
