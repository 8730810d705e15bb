"""One source for every setting: settings dataclasses, TOML presets, config.json read back, config show."""

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from icon2_lens._config import (
    ConfigError,
    config_fields,
    format_layers,
    from_dict,
    help_of,
    parse_layer_spec,
    to_dict,
)
from icon2_lens.runs.config import ExperimentConfig, RunConfig, check_run_dir, to_toml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config_json"
PRESETS = {
    "default": RunConfig,
    "experiment-small": ExperimentConfig,
    "experiment-medium": ExperimentConfig,
    "experiment-large": ExperimentConfig,
}


def _settings_classes(cls, seen=None):
    seen = seen if seen is not None else set()
    if cls in seen:
        return seen
    seen.add(cls)
    for f in config_fields(cls):
        tp = cls.__dataclass_fields__[f.name].type
        sub = getattr(cls, "__annotations__", {}).get(f.name, tp)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            _settings_classes(sub, seen)
    return seen


@pytest.mark.parametrize("cls", [RunConfig, ExperimentConfig])
def test_every_setting_has_help_text(cls):
    for settings in _settings_classes(cls):
        missing = [f.name for f in config_fields(settings) if not help_of(f)]
        assert not missing, f"{settings.__name__}: no help text for {missing}"


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if (FIXTURES / f"{n}.json").is_file()))
def test_a_run_folder_written_before_the_redesign_reads_back_as_its_preset(name, tmp_path):
    """``config.json`` files written by the flat-layout code (fixtures) equal today's presets."""
    cls = PRESETS[name]
    old = json.loads((FIXTURES / f"{name}.json").read_text())
    preset = cls.from_toml(ROOT / "configs" / f"{name}.toml")
    restored = cls.from_dict(old)
    # settings changed on purpose since (issue 11): judges that read no direction joined the
    # default list, the default run balances criteria, makes one-sided pairs and trains at
    # β = 1.0; a folder keeps what it recorded
    changed = {("eval", "judges"), ("filter", "balance"), ("pairs", "gamma_pos"), ("dpo", "beta")}
    for section, key in changed:
        mine, now = getattr(restored, section, None), getattr(preset, section, None)
        if mine is not None and getattr(mine, key) != getattr(now, key):
            restored = dataclasses.replace(
                restored, **{section: dataclasses.replace(mine, **{key: getattr(now, key)})}
            )
    assert restored == preset
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    check_run_dir(run, cls.from_dict(old))  # resumes with what it recorded
    with pytest.raises(
        ConfigError, match=r"another configuration \(differences in: .*extract\.seed"
    ):
        check_run_dir(run, cls.from_toml(ROOT / "configs" / f"{name}.toml", seed=1))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_show_reads_back_to_the_same_configuration(name):
    cls = PRESETS[name]
    cfg = cls.from_toml(ROOT / "configs" / f"{name}.toml")
    text = to_toml(cfg)
    assert cls.from_dict(tomllib.loads(text)) == cfg
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_the_seed_is_every_stages_unless_a_section_sets_its_own():
    cfg = RunConfig.from_dict({"seed": 5, "dpo": {"seed": 9}})
    assert (
        cfg.extract.seed,
        cfg.synthesize.seed,
        cfg.pairs.seed,
        cfg.dpo.seed,
        cfg.evaluate.seed,
    ) == (5, 5, 5, 9, 5)


def test_defaults_come_from_the_dataclasses():
    cfg = RunConfig()
    from icon2_lens.directions.extract import ExtractConfig
    from icon2_lens.pairs.icon2 import PairConfig

    assert cfg.extract == ExtractConfig() and cfg.pairs == PairConfig()
    assert RunConfig.from_dict({}) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"pairs": {"gama_pos": 1}},
            "unknown config key pairs.gama_pos — did you mean 'gamma_pos'",
        ),
        ({"extract": {"n_instructions": "many"}}, "must be an integer"),
        ({"extract": {"n_instructions": True}}, "must be an integer"),
        ({"filter": {"fraction": 1.5}}, "fraction must be in"),
        ({"pairs": {"layers": "ten"}}, "cannot read layer selection"),
        ({"pairs": {"unit": "metres"}}, "use one of relative, absolute"),
        ({"pairs": 3}, "must be a table"),
        ({"pairs": []}, "must be a table"),
        ({"exract": {}}, "did you mean 'extract'"),
    ],
)
def test_bad_configurations_are_refused_with_the_fix(data, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(data)


def test_experiment_checks():
    with pytest.raises(ConfigError, match="unknown pair source"):
        ExperimentConfig.from_dict({"experiment": {"sources": ["icon2", "rlhf"]}})
    with pytest.raises(ConfigError, match="unknown judge"):
        ExperimentConfig.from_dict({"eval": {"judges": ["gpt4"]}})
    with pytest.raises(ConfigError, match="ranking_judge"):
        ExperimentConfig.from_dict({"baselines": {"ranking_judge": "oracle"}})


def test_layer_specs_round_trip():
    for spec in ("13-22", "3,5,-1", "0-2,7"):
        layers = parse_layer_spec(spec)
        assert parse_layer_spec(format_layers(layers)) == layers
    assert (
        parse_layer_spec("all", "all") is None and format_layers(None, "criterion") == "criterion"
    )


def test_from_dict_and_to_dict_are_inverse_for_every_section():
    cfg = ExperimentConfig.from_toml(ROOT / "configs" / "experiment-small.toml")
    for f in config_fields(ExperimentConfig):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            assert from_dict(type(value), to_dict(value)) == value
