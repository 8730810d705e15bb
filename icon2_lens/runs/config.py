"""The configuration of a run and of an experiment: trees of the stages' own settings classes.

A run (``icon2-lens run``) is :class:`RunConfig`: the model, a seed, and one section per stage,
each section *being* that stage's settings class (:class:`~icon2_lens.directions.extract.ExtractConfig`,
:class:`~icon2_lens.instructions.synthesize.SynthesisConfig`, ...). So every default lives in one
dataclass field, and a TOML file only states what differs::

    model = "smollm2-135m"
    seed = 0

    [extract]
    n_instructions = 128

    [pairs]
    layers = "13-22"

The top-level ``seed`` is the seed of every stage unless a section sets its own ``seed``. The
presets are TOML files in ``configs/`` (``default.toml``, ``experiment-small.toml``, ...);
``icon2-lens config show --config F`` prints the effective configuration with every field's help.

A run folder records its configuration in ``config.json``; resuming compares the configuration
read back from it with the current one (:func:`check_run_dir`, keys the file lacks take their
defaults), so folders written before the settings were dataclasses still resume. The ``run`` and
``experiment`` commands given an existing folder and no ``--config`` resume with its recorded
configuration (:func:`recorded_config`).

Example:
    >>> cfg = RunConfig.from_dict({"seed": 3, "pairs": {"layers": "13-15"}})
    >>> cfg.pairs.layers, cfg.pairs.seed, cfg.extract.seed
    ((13, 14, 15), 3, 3)
    >>> RunConfig.from_dict({"pairs": {"gama_pos": 0.1}})
    Traceback (most recent call last):
    ...
    icon2_lens._config.ConfigError: unknown config key pairs.gama_pos — did you mean 'gamma_pos'?
"""

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icon2_lens._config import (
    ConfigError,
    build,
    coerce,
    config_fields,
    documented,
    field_type,
    format_value,
    from_dict,
    help_of,
    option,
    to_dict,
    unknown_key,
)
from icon2_lens._files import (
    check_writable,
    read_json,
    read_utf8,
    settings_differences,
    write_json,
)
from icon2_lens.alignez.config import AlignEZConfig
from icon2_lens.audit.config import AuditConfig
from icon2_lens.consistency.filter import FilterConfig
from icon2_lens.directions.extract import ExtractConfig
from icon2_lens.dpo.settings import DPOSettings
from icon2_lens.evaluate.judging import EvalConfig
from icon2_lens.instructions.synthesize import SynthesisConfig
from icon2_lens.judge.registry import INDEPENDENT_JUDGES, JUDGES
from icon2_lens.model.hooks import normalize_layers
from icon2_lens.model.load import DEFAULT_MODEL
from icon2_lens.pairs.baselines import SOURCES
from icon2_lens.pairs.common import BaselineConfig
from icon2_lens.pairs.icon2 import PairConfig

__all__ = [
    "RunConfig",
    "ExperimentConfig",
    "HeldoutEvalConfig",
    "ExperimentSettings",
    "BaselineStage",
    "AlignEZStage",
    "read_toml",
    "load_config",
    "check_run_dir",
    "recorded_config",
    "to_toml",
    "CONFIG_FILE",
]

CONFIG_FILE = "config.json"


def section(cls: type, *, help: str) -> Any:  # noqa: A002
    """A field holding one stage's settings (a TOML table of the same name)."""
    return option(help=help, factory=cls, cli=False)


def _is_section(owner: type, name: str) -> bool:
    tp = field_type(owner, name)
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@documented
@dataclass(frozen=True, kw_only=True)
class HeldoutEvalConfig:
    """The run's last stage: held-out built-in instructions answered by the base and the trained model."""

    n_heldout: int = option(
        96, help="held-out built-in instructions answered by both models (the last n)"
    )
    max_new_tokens: int = option(96, help="answer budget in tokens (greedy)")
    batch_size: int = option(16, help="rows per forward pass")
    seed: int = option(0, help="seed of the bootstrap intervals")
    judges: tuple[str, ...] = option(
        ("relevance", "self_pairwise", "fluency", "apology", "length"),
        help="judges that read no direction, trained against base (win rates with intervals), "
        "besides the reading along the directions; comma-separated",
    )

    def __post_init__(self) -> None:
        for name in ("n_heldout", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        object.__setattr__(self, "judges", tuple(self.judges))
        bad = [n for n in self.judges if n not in INDEPENDENT_JUDGES]
        if bad:
            raise ValueError(
                f"evaluate.judges takes judges that read no direction, got {bad}; use some of "
                f"{', '.join(INDEPENDENT_JUDGES)}"
            )


@documented
@dataclass(frozen=True, kw_only=True)
class ExperimentSettings:
    """Which pair sources the comparison experiment runs, and how many pairs each one trains on."""

    sources: tuple[str, ...] = option(SOURCES, help="pair sources to compare")
    n_instructions: int = option(
        60,
        help="instructions each source is given (top-consistency ones; a random "
        "pool sample for icon2_unfiltered)",
    )
    n_pairs: int = option(48, help="pairs every source trains on (all sources get the same number)")
    alignez: bool = option(True, help="also evaluate AlignEZ (inference-time, no training)")

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown pair source(s) {unknown}; use some of {', '.join(SOURCES)}")
        if not self.sources:
            raise ValueError("experiment.sources is empty: name at least one pair source")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("experiment.sources lists a source twice")
        for key in ("n_pairs", "n_instructions"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"experiment.{key} must be at least 1, got {getattr(self, key)}")


@documented
@dataclass(frozen=True, kw_only=True)
class BaselineStage(BaselineConfig):
    """The baselines of an experiment: :class:`~icon2_lens.pairs.common.BaselineConfig` and its ranking judge."""

    ranking_judge: str = option(
        "inherent",
        help="the judge that ranks sampling_ranking's samples "
        "(self_rewarding always uses self_rating)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ranking_judge not in JUDGES:
            raise ValueError(
                f"unknown baselines.ranking_judge {self.ranking_judge!r}; use one of {', '.join(JUDGES)}"
            )


@documented
@dataclass(frozen=True, kw_only=True)
class AlignEZStage(AlignEZConfig):
    """AlignEZ in an experiment: :class:`~icon2_lens.alignez.config.AlignEZConfig` and how many queries fit it."""

    n_queries: int = option(32, help="kept instructions the edit is fitted on")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_queries < 1:
            raise ValueError(f"alignez.n_queries must be at least 1, got {self.n_queries}")


@documented
@dataclass(frozen=True, kw_only=True)
class ExperimentEval(EvalConfig):
    """An experiment's evaluation: :class:`~icon2_lens.evaluate.judging.EvalConfig` on the shipped
    held-out set, and optionally a second, larger held-out set from the experiment's own synthesis."""

    n_synthetic: int = option(
        0,
        help="also judge every system on this many clean self-synthesized instructions that no "
        "pair source was given (drawn with the eval seed; 0: none). They come from the same "
        "synthesis as the training instructions, so the set can be larger than the shipped one",
    )
    synthetic_reference: str = option(
        "icon2",
        help="the system every other one is compared with on the synthetic set (icon2: its "
        "model against the base and against every other source, in one judging pass)",
    )
    synthetic_judges: tuple[str, ...] = option(
        (), help="judges on the synthetic set (empty: the same as judges, without refusal)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "synthetic_judges", tuple(self.synthetic_judges))
        if self.n_synthetic < 0:
            raise ValueError(f"eval.n_synthetic must be >= 0, got {self.n_synthetic}")
        bad = [name for name in self.synthetic_judges if name not in JUDGES]
        if bad:
            raise ValueError(f"unknown synthetic judge(s) {bad}; use some of {', '.join(JUDGES)}")
        if self.n_synthetic and not self.judges_on_synthetic():
            raise ValueError(
                "eval.n_synthetic > 0 but no judge for the synthetic set (refusal reads harmful "
                "requests only): name synthetic_judges"
            )

    def judges_on_synthetic(self) -> tuple[str, ...]:
        """The judges of the synthetic set (it holds no harmful request, so never ``refusal``).

        Example:
            >>> ExperimentEval(judges=("relevance", "refusal")).judges_on_synthetic()
            ('relevance',)
        """
        return tuple(j for j in (self.synthetic_judges or self.judges) if j != "refusal")


@dataclass(frozen=True, kw_only=True)
class _Tree:
    """What a run and an experiment share: the model, the seed, and reading/writing the tree."""

    model: str = option(
        DEFAULT_MODEL,
        help="embedded model key (smollm2-135m, gemma3-270m), HF model directory or hub id",
    )
    seed: int = option(0, help="seed of every stage (a section may set its own seed)")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None = None, **overrides: Mapping[str, Any] | Any
    ) -> Any:
        """The configuration from a mapping (TOML or JSON shaped), then ``overrides`` (section -> mapping).

        Raises:
            ConfigError: Unknown keys or sections, wrong types, values a stage rejects.
        """
        data = {**(data or {})}
        for key, value in overrides.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, Mapping) else value
        names = [f.name for f in config_fields(cls)]
        for key in data:
            if key not in names:
                raise unknown_key(key, names)
        kwargs: dict[str, Any] = {}
        for f in config_fields(cls):
            if not _is_section(cls, f.name):
                if f.name in data:
                    kwargs[f.name] = coerce(cls, f.name, data[f.name])
                continue
            given = data.get(f.name, {})
            if not isinstance(given, Mapping):
                raise ConfigError(
                    f"section {f.name!r} must be a table",
                    f"write it as [{f.name}] with key = value lines",
                )
            sub = field_type(cls, f.name)
            given = dict(given)
            if "seed" in {x.name for x in config_fields(sub)} and "seed" not in given:
                given["seed"] = kwargs.get("seed", _SEED_DEFAULT)
            kwargs[f.name] = from_dict(sub, given, where=f"{f.name}.")
        return build(cls, kwargs, fix="fix that value in the config")

    @classmethod
    def from_toml(cls, path: str | Path | None, **overrides: Any) -> Any:
        """The configuration from a TOML file (``None``: every default), then ``overrides``."""
        return cls.from_dict(read_toml(path) if path is not None else {}, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Every value, sections as nested dicts (what ``config.json`` holds)."""
        return to_dict(self)

    def check_model(self, n_layers: int) -> None:
        """Check every layer selection of every section against a model of ``n_layers`` blocks.

        Runs once the model is loaded and before any stage works, so a layer a 3-block model
        lacks is reported at once rather than after the stages before the one that uses it.

        Raises:
            ConfigError: A selection names a layer outside ``0..n_layers-1`` (or ``-n..-1``).
        """
        for f in config_fields(type(self)):
            if not _is_section(type(self), f.name):
                continue
            section = getattr(self, f.name)
            for key in LAYER_FIELDS:
                layers = getattr(section, key, None)
                if not isinstance(layers, (tuple, list)):  # None (all) or a word ("control")
                    continue
                try:
                    normalize_layers(list(layers), n_layers)
                except ValueError as e:
                    raise ConfigError(
                        f"{f.name}.{key}: {e}",
                        f"choose layers of this {n_layers}-layer model (0..{n_layers - 1}) in [{f.name}]",
                    ) from None


#: The settings that name layers of the model (checked by :meth:`_Tree.check_model`).
LAYER_FIELDS = ("layers", "candidate_layers")


_SEED_DEFAULT = next(f.default for f in dataclasses.fields(_Tree) if f.name == "seed")


@documented
@dataclass(frozen=True, kw_only=True)
class RunConfig(_Tree):
    """``icon2-lens run``: extract → synthesize → filter → pairs → dpo → evaluate → audit, with a report."""

    extract: ExtractConfig = section(ExtractConfig, help="direction extraction")
    synthesize: SynthesisConfig = section(
        SynthesisConfig, help="Magpie-style self-synthesis of instructions"
    )
    filter: FilterConfig = section(FilterConfig, help="inherent-consistency filter")
    pairs: PairConfig = section(PairConfig, help="steered chosen/rejected pairs")
    dpo: DPOSettings = section(DPOSettings, help="DPO training with TRL")
    evaluate: HeldoutEvalConfig = section(
        HeldoutEvalConfig, help="held-out evaluation of base vs trained"
    )
    audit: AuditConfig = section(
        AuditConfig,
        help="audit of the directions, the pairs (shortcuts, right after the pairs stage) and the trained model",
    )


@documented
@dataclass(frozen=True, kw_only=True)
class ExperimentConfig(_Tree):
    """``icon2-lens experiment``: Icon² against baseline pair sources and AlignEZ on one model."""

    experiment: ExperimentSettings = section(ExperimentSettings, help="sources and pair counts")
    extract: ExtractConfig = section(ExtractConfig, help="direction extraction")
    synthesize: SynthesisConfig = section(
        SynthesisConfig, help="Magpie-style self-synthesis of instructions"
    )
    filter: FilterConfig = section(FilterConfig, help="inherent-consistency filter")
    pairs: PairConfig = section(PairConfig, help="Icon² steering")
    baselines: BaselineStage = section(BaselineStage, help="sp, sampling_ranking, self_rewarding")
    dpo: DPOSettings = section(DPOSettings, help="DPO, identical for every source")
    alignez: AlignEZStage = section(AlignEZStage, help="AlignEZ inference-time editing")
    eval: ExperimentEval = section(
        ExperimentEval, help="held-out evaluation of every system against the base"
    )

    def __post_init__(self) -> None:
        systems = ["base", *self.experiment.sources] + (
            ["alignez"] if self.experiment.alignez else []
        )
        refs = {"eval.reference": self.eval.reference}
        if self.eval.n_synthetic:
            refs["eval.synthetic_reference"] = self.eval.synthetic_reference
        for key, name in refs.items():
            if name not in systems:
                raise ValueError(
                    f"{key} = {name!r} is not a system of this experiment ({', '.join(systems)})"
                )


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as a dict; a missing file or bad TOML raises a ``ConfigError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {str(p)!r} does not exist",
            "pass an existing TOML file (the presets are in configs/)",
        )
    try:
        return tomllib.loads(read_utf8(p))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"{p}: not valid TOML ({e})", "fix the file (see configs/default.toml)"
        ) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file", "pass a TOML file") from e


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """The run configuration: the defaults, updated from a TOML file, then from ``overrides``."""
    return RunConfig.from_toml(path, **overrides)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_run_dir(out: str | Path, cfg: Any, *, record: bool = True) -> None:
    """Record ``cfg`` in ``out/config.json``, or refuse a folder whose recorded configuration differs.

    The recorded file is read back through the same settings classes (keys it lacks take their
    defaults), so a folder written before a setting existed still resumes. With
    ``record=False`` nothing is written: a run checks its folder this way before it loads the
    model and records its configuration only once every check has passed, so a failed start
    never leaves a ``config.json`` that refuses the corrected configuration.

    Raises:
        ConfigError: ``out`` is a file, or holds a run made with another configuration.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file", "pass a directory for --out")
    check_writable(out.parent, flag="--out")
    path = out / CONFIG_FILE
    if path.is_file():
        try:
            have = type(cfg).from_dict(read_json(path))
        except ConfigError as e:
            raise ConfigError(
                f"{path} is not a configuration of this kind ({e.what})",
                "choose another --out or delete it",
            ) from e
        if have != cfg:
            diff = settings_differences(_flat(to_dict(cfg)), _flat(to_dict(have)))
            raise ConfigError(
                f"{out} holds a run made with another configuration (differences in: "
                f"{', '.join(diff[:8])}{', ...' if len(diff) > 8 else ''})",
                "choose another --out or delete it",
            )
        return
    if record:
        out.mkdir(parents=True, exist_ok=True)
        write_json(to_dict(cfg), path)


def recorded_config(out: str | Path, cls: type) -> Any:
    """The configuration recorded in ``out/config.json`` (``None`` if there is none), to resume with."""
    path = Path(out) / CONFIG_FILE
    return cls.from_dict(read_json(path)) if path.is_file() else None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml_lines(obj: Any, *, inherited_seed: int | None = None) -> list[str]:
    lines = []
    cls = type(obj)
    for f in config_fields(cls):
        if _is_section(cls, f.name):
            continue
        if f.name == "seed" and inherited_seed is not None and obj.seed == inherited_seed:
            lines.append(f"# seed = {inherited_seed}".ljust(40) + "  # the top-level seed")
            continue
        value = getattr(obj, f.name)
        if f.metadata.get("layers") is not None:
            text = _toml_value(format_value(cls, f.name, value))
        elif value is None:
            lines.append(f"# {f.name} = (none)".ljust(40) + f"  # {help_of(f)}")
            continue
        else:
            text = _toml_value(value)
        lines.append(f"{f.name} = {text}".ljust(40) + f"  # {help_of(f)}")
    return lines


def to_toml(cfg: Any) -> str:
    """The effective configuration as TOML, every value with its help text as a comment.

    The text reads back to the same configuration (``from_dict(tomllib.loads(to_toml(cfg)))``).
    """
    out = [
        f"# {type(cfg).__name__}: {(type(cfg).__doc__ or '').strip().splitlines()[0]}",
        *_toml_lines(cfg),
    ]
    for f in config_fields(type(cfg)):
        if _is_section(type(cfg), f.name):
            section_lines = _toml_lines(getattr(cfg, f.name), inherited_seed=cfg.seed)
            out += ["", f"[{f.name}]  # {help_of(f)}", *section_lines]
    return "\n".join(out) + "\n"
