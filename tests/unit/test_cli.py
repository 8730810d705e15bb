"""The command line: one convention for every command, flags derived from the settings dataclasses."""

import argparse
import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from icon2_lens._config import config_fields
from icon2_lens.cli import COMMANDS, build_parser, main
from icon2_lens.cli.args import DERIVED_FLAGS
from icon2_lens.runs.config import RunConfig
from icon2_lens.testing import save_tiny_model


def _parsers(parser: argparse.ArgumentParser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*prefix, name))


def _default(cls, name):
    f = {x.name: x for x in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def test_every_derived_flag_defaults_to_its_field():
    checked = 0
    for path, parser in _parsers(build_parser()):
        derived = getattr(parser, DERIVED_FLAGS, [])
        by_dest = {a.dest: a for a in parser._actions}
        names = {d for d, _, _ in derived}
        # the settings classes whose every command-line field is a flag of this command
        whole = {
            cls
            for _, cls, _ in derived
            if {f.name for f in config_fields(cls) if f.metadata.get("cli", True)} <= names
        }
        fields = {f.name for cls in whole for f in config_fields(cls)}
        for dest, cls, name in derived:
            assert by_dest[dest].default == _default(cls, name), (path, dest)
            checked += 1
        # no hand-written flag shadows a settings field of the same command
        own = {a.dest for a in parser._actions if a.option_strings} - {d for d, _, _ in derived}
        assert not own & fields, (path, own & fields)
    assert checked > 80


def test_every_command_is_registered_and_documented():
    parser = build_parser()
    assert set(parser.commands) == set(COMMANDS)
    for name, (module, sub) in parser.commands.items():
        assert callable(module.register) and callable(module.run) and sub.format_help(), name


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cli_tiny"))


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    errors = [x for x in lines if x.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), (
        captured.err
    )
    assert "Traceback" not in captured.err and not captured.out
    return errors[0]


def test_ten_kinds_of_bad_input_give_one_error_line_and_exit_2(
    tmp_path, tiny_dir, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("x = [\n")
    (tmp_path / "unknown.toml").write_text("[pairs]\ngama_pos = 0.1\n")
    (tmp_path / "type.toml").write_text('[extract]\nn_instructions = "many"\n')
    (tmp_path / "bad.jsonl").write_text(
        '{"index": 0, "instruction": "x", "criterion": "honesty"}\n{oops\n'
    )
    (tmp_path / "a_file").write_text("")
    model = ["--model", str(tiny_dir)]
    small = [*model, "--n-instructions", "4", "--n-heldout", "2", "--no-png", "--no-progress"]
    cases = {
        "missing file": (["filter", "--instructions", "nope.txt"], "does not exist"),
        "malformed TOML": (["run", "--config", "bad.toml"], "not valid TOML"),
        "unknown key": (["run", "--config", "unknown.toml"], "unknown config key pairs.gama_pos"),
        "wrong type": (["config", "show", "--config", "type.toml"], "must be an integer"),
        "layer out of range": (
            ["extract", *small, "--layers", "40", "--out", "ex1"],
            "out of range",
        ),
        "unknown criterion": (
            ["extract", *small, "--criteria", "nope", "--out", "ex2"],
            "unknown criterion",
        ),
        "unknown flag": (
            ["pairs", "--kept", "k.jsonl", "--gama-pos", "0.1"],
            "unrecognized arguments",
        ),
        "bad flag value": (["synthesize", "--n", "many"], "invalid"),
        "bad choice": (["extract", "--method", "svd"], "invalid choice"),
        "malformed JSONL": (["pairs", "--kept", "bad.jsonl"], "bad.jsonl:2"),
        "output is a file": (["extract", *small, "--out", "a_file"], "is a file"),
        "missing config file": (["experiment", "--config", "none.toml"], "does not exist"),
    }
    for what, (argv, expected) in cases.items():
        line = _error(capsys, argv)
        assert expected in line, (what, line)
        assert " — " in line, (what, line)  # what is wrong — how to fix it
    # a direction set from another model: extract on the tiny model, use it with a wider one
    assert main(["extract", *small, "--criteria", "honesty", "--out", "ex"]) == 0
    other = save_tiny_model(tmp_path / "wide", d_model=32)
    (tmp_path / "ins.txt").write_text("tell me a story\n")
    line = _error(
        capsys,
        [
            "filter",
            "--model",
            str(other),
            "--instructions",
            "ins.txt",
            "--directions",
            "ex",
            "--no-png",
            "--no-progress",
        ],
    )
    assert "another model" in line and " — " in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        main(["filter", "--instructions", "nope.txt", "--debug"])


def test_results_have_one_shape(tmp_path, capsys):
    (tmp_path / "x.toml").write_text("seed = 4\n[pairs]\nlayers = 'criterion'\n")
    assert main(["config", "show", "--config", str(tmp_path / "x.toml")]) == 0
    text = capsys.readouterr().out
    cfg = RunConfig.from_dict(tomllib.loads(text))
    assert cfg.seed == 4 and cfg.pairs.layers is None and cfg.pairs.seed == 4
    assert main(["config", "show", "--json", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == "config" and set(out) == {"command", "summary", "outputs"}


def test_stage_flags_take_defaults_from_a_config_section(tmp_path):
    (tmp_path / "run.toml").write_text("seed = 7\n[pairs]\ngamma_pos = 0.05\nlayers = '2-3'\n")
    parser = build_parser()
    argv = [
        "pairs",
        "--kept",
        "k.jsonl",
        "--config",
        str(tmp_path / "run.toml"),
        "--batch-size",
        "3",
    ]
    from icon2_lens.cli._common import apply_config
    from icon2_lens.cli.pairs import CONFIG_CLASSES

    args = parser.parse_args(argv)
    assert apply_config(parser.commands["pairs"][1], args, CONFIG_CLASSES)
    args = parser.parse_args(argv)
    assert (args.gamma_pos, args.layers, args.seed, args.batch_size) == (0.05, (2, 3), 7, 3)


def test_run_command_on_a_tiny_config(tmp_path, tiny_dir, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'model = "{tiny_dir}"\n[extract]\ncriteria = ["honesty"]\nn_instructions = 4\nn_heldout = 2\n'
        '[pairs]\nlayers = "1-2"\n'  # the default 13-22 is not in a 3-layer model
    )
    out = tmp_path / "run"
    capsys.readouterr()
    argv = [
        "run",
        "--config",
        str(toml),
        "--out",
        str(out),
        "--stop-after",
        "extract",
        "--no-png",
        "--no-progress",
    ]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["outputs"]["report"].endswith("report.md")
        and (out / "extract" / "honesty" / "cfg.json").is_file()
    )
    recorded = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert recorded == RunConfig.from_toml(toml)
    # without --config, the folder's recorded configuration resumes it
    resume = ["run", "--out", str(out), "--stop-after", "extract", "--no-png", "--no-progress"]
    assert main(resume) == 0
    toml.write_text(toml.read_text().replace("n_heldout = 2", "n_heldout = 3"))
    line = _error(capsys, argv)
    assert "another configuration (differences in: extract.n_heldout)" in line


def test_review_regressions_stay_fixed(tmp_path, capsys):
    root = Path(__file__).resolve().parents[2]
    parser = build_parser()
    # the shared flags work before the command too, and --no-png is accepted everywhere
    args = parser.parse_args(["-v", "--json", "pairs", "--kept", "k.jsonl", "--no-png"])
    assert args.verbose and args.json and args.no_png
    # a run preset's top-level seed does not break a section whose settings have no seed
    from icon2_lens.cli._common import apply_config
    from icon2_lens.cli.filter_ import CONFIG_CLASSES

    argv = ["filter", "--instructions", "x.txt", "--config", str(root / "configs" / "default.toml")]
    args = parser.parse_args(argv)
    assert apply_config(parser.commands["filter"][1], args, CONFIG_CLASSES)
    assert parser.parse_args(argv).fraction == 0.25
    # fraction and threshold cannot be given together
    line = _error(
        capsys, ["filter", "--instructions", "x.txt", "--fraction", "0.2", "--threshold", "1"]
    )
    assert "not allowed with argument" in line


def test_config_show_json_and_seed_inheritance(tmp_path, capsys):
    assert main(["config", "show", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["config"]["pairs"]["layers"] == list(range(13, 23))
    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out.replace("\nseed = 0", "\nseed = 9", 1)
    edited = RunConfig.from_dict(tomllib.loads(text))
    assert edited.seed == 9 and edited.pairs.seed == 9 and edited.extract.seed == 9
