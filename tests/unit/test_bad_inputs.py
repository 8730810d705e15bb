"""Bad inputs, as a new user makes them: every one ends in one line naming the value and the fix.

Each CLI case must exit with code 2, print exactly one ``error: <what> — <fix>`` line (no
traceback, nothing on stdout) and write nothing it should not. Each API case must raise a
``ValueError`` (``ConfigError`` is one) whose message holds the expected words. The cases cover
the ten most important findings of the reliability review (eval caches, γ signs, damaged
direction sets, torn JSONL, another model's samples, exceptions of other types, damaged settings
files, late validation, DPO duplicates) and the smaller ones.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from icon2_lens._config import ConfigError
from icon2_lens.cli import main
from icon2_lens.testing import save_tiny_model

GOOD_KEPT = [
    {"index": 0, "instruction": "tell me a story", "criterion": "honesty", "consistency": 1.0},
    {"index": 1, "instruction": "write a poem", "criterion": "harmlessness", "consistency": 0.5},
]


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _damaged_set(src: Path, dst: Path, change) -> Path:
    """A copy of direction folder ``src`` whose honesty set is changed by ``change(vectors, cfg)``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    honesty = dst / "honesty"
    tensors = load_file(honesty / "directions.safetensors")
    cfg = json.loads((honesty / "cfg.json").read_text())
    change(tensors, cfg)
    save_file(tensors, str(honesty / "directions.safetensors"), metadata=None)
    (honesty / "cfg.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    tiny = save_tiny_model(root / "tiny")
    ex = root / "ex"
    argv = ["extract", "--model", str(tiny), "--criteria", "honesty,harmlessness"]
    argv += ["--n-instructions", "4", "--n-heldout", "2", "--no-figures", "--no-progress"]
    argv += ["--no-wording-check", "--out", str(ex)]
    assert main(argv) == 0
    w = {"root": root, "tiny": tiny, "ex": ex}
    w["kept"] = _jsonl(root / "kept.jsonl", GOOD_KEPT)
    w["empty_kept"] = _jsonl(
        root / "empty_kept.jsonl",
        [{"index": 0, "instruction": "  ", "criterion": "honesty", "consistency": 1.0}],
    )
    w["ins"] = root / "ins.txt"
    w["ins"].write_text("tell me a story\nwrite a poem\n")
    w["latin1"] = root / "latin1.txt"
    w["latin1"].write_bytes("caf\xe9 story\n".encode("latin-1"))
    w["dir"] = root / "a_dir"
    w["dir"].mkdir()
    w["file"] = root / "a_file"
    w["file"].write_text("")
    w["evalins"] = _jsonl(root / "evalins.jsonl", [{"instruction": "tell me a story"}])
    w["pairs"] = _jsonl(root / "pairs.jsonl", [_pair("tell me", "a story .", "no .")] * 8)
    w["same"] = _jsonl(
        root / "same.jsonl", [_pair(f"tell me {i}", "a story .", "a story .") for i in range(8)]
    )
    w["torn"] = root / "torn.jsonl"
    w["torn"].write_text(json.dumps(_pair("tell me", "a", "b"))[:-3])

    def nan(t, cfg):
        name = next(iter(t))
        t[name][0] = float("nan")

    def scaled(t, cfg):
        for name in t:
            t[name] = t[name] * 1000

    def cfg_list(t, cfg):
        cfg.clear()

    w["nan"] = _damaged_set(ex, root / "ds_nan", nan)
    w["scaled"] = _damaged_set(ex, root / "ds_scaled", scaled)
    w["cfglist"] = _damaged_set(ex, root / "ds_cfglist", cfg_list)
    (w["cfglist"] / "honesty" / "cfg.json").write_text("[1, 2]")
    w["diag"] = shutil.copytree(ex, root / "ds_diag")
    (w["diag"] / "honesty" / "diagnostics.json").write_text('{"interval": ')
    for name, text in {
        "frac.toml": f'model = "{tiny}"\n[filter]\nfraction = 1.5\n',
        "crit.toml": f'model = "{tiny}"\n[extract]\ncriteria = "honesty"\n',
        "type.toml": f'model = "{tiny}"\n[pairs]\nbatch_size = "8"\n',
        "gamma.toml": f'model = "{tiny}"\n[pairs]\ngamma_neg = 0.04\n',
        "negbatch.toml": f'model = "{tiny}"\n[synthesize]\nbatch_size = 0\n',
        "okrun.toml": f'model = "{tiny}"\n[extract]\ncriteria = ["honesty"]\nn_instructions = 4\n'
        "n_heldout = 2\n",
    }.items():
        (root / name).write_text(text)
    return w


def _cli_error(capsys, argv) -> str:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err[-2000:])
    lines = captured.err.strip().splitlines()
    errors = [x for x in lines if x.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.err[-2000:]
    assert "Traceback" not in captured.err and not captured.out
    assert " — " in errors[0], errors[0]  # what is wrong — how to fix it
    return errors[0]


def _cases(w):
    t, ex, root = w["tiny"], w["ex"], w["root"]
    m = ["--model", t]
    quiet = ["--no-progress", "--no-png"]
    pairs = ["pairs", *m, "--kept", w["kept"], "--directions", ex, "--layers", "1-2", *quiet]
    pairs += ["--max-new-tokens", "4"]
    filt = ["filter", *m, "--instructions", w["ins"], *quiet]
    dpo = ["dpo", *m, "--max-steps", "1", *quiet]
    ev = ["eval", *m, "--instructions", w["evalins"], "--judges", "length", *quiet]
    syn = ["synthesize", *m, "--n", "2", "--max-new-tokens", "4", *quiet]
    ext = ["extract", *m, "--criteria", "honesty", "--n-instructions", "4", "--n-heldout", "2"]
    ext += ["--no-figures", "--no-progress", "--no-wording-check"]
    out = root / "o"
    return {
        # 2. γ signs and sizes
        "gamma_neg positive": ([*pairs, "--gamma-neg", "0.04", "--out", out / "g1"], "gamma_neg"),
        "gammas swapped": (
            [*pairs, "--gamma-pos=-0.04", "--gamma-neg", "0.04", "--out", out / "g2"],
            "gamma_neg must be negative",
        ),
        "gamma_neg zero": ([*pairs, "--gamma-neg", "0", "--out", out / "g3"], "gamma_neg"),
        "gamma huge": ([*pairs, "--gamma-pos", "1e6", "--out", out / "g4"], "--allow-any-gamma"),
        "gamma not a number": ([*pairs, "--gamma-pos", "abc", "--out", out / "g5"], "invalid"),
        "gamma in run config": (
            ["run", "--config", root / "gamma.toml", "--out", out / "g6"],
            "gamma_neg",
        ),
        # 3. damaged direction sets
        "NaN direction": ([*filt, "--directions", w["nan"], "--out", out / "d1"], "not finite"),
        "non-unit direction": ([*filt, "--directions", w["scaled"], "--out", out / "d2"], "unit"),
        "cfg.json not an object": (
            [*filt, "--directions", w["cfglist"], "--out", out / "d3"],
            "cfg.json",
        ),
        "diagnostics damaged": (
            [*filt, "--directions", w["diag"], "--out", out / "d4"],
            "diagnostics.json",
        ),
        "directions missing": ([*filt, "--directions", root / "nope", "--out", out / "d5"], "nope"),
        "directions for another width": (
            [*filt, "--directions", "__wide__", "--out", out / "d6"],
            "another model",
        ),
        # 6. exceptions of other kinds
        "out is a file": ([*ext, "--out", w["file"]], "is a file"),
        "out below a file": ([*ext, "--out", w["file"] / "sub"], "a_file"),
        "model dir without config": (
            ["extract", "--model", w["dir"], "--out", out / "x1"],
            "config.json",
        ),
        "model path missing": (
            ["extract", "--model", "./no/such/model", "--out", out / "x2"],
            "does not exist",
        ),
        "instructions not UTF-8": (
            [*filt, "--instructions", w["latin1"], "--directions", ex, "--out", out / "x3"],
            "UTF-8",
        ),
        "instructions is a directory": (
            [*filt, "--instructions", w["dir"], "--directions", ex, "--out", out / "x4"],
            "directory",
        ),
        # 9. configs and specs validated before any work
        "fraction above 1 in run config": (
            ["run", "--config", root / "frac.toml", "--out", out / "c1"],
            "fraction",
        ),
        "criteria as a string": (
            ["run", "--config", root / "crit.toml", "--out", out / "c2"],
            "criteria",
        ),
        "wrong type in config": (
            ["run", "--config", root / "type.toml", "--out", out / "c3"],
            "batch_size",
        ),
        "batch size 0 in config": (
            ["run", "--config", root / "negbatch.toml", "--out", out / "c4"],
            "batch_size",
        ),
        "fraction flag above 1": (
            [*filt, "--directions", ex, "--fraction", "1.5", "--out", out / "c5"],
            "fraction",
        ),
        "synthesize batch size 0": (
            [*syn, "--batch-size", "0", "--out", out / "c6.jsonl"],
            "batch_size",
        ),
        "reversed layer range": ([*pairs, "--layers", "2-1", "--out", out / "c7"], "2-1"),
        "layer out of range": ([*pairs, "--layers", "40", "--out", out / "c8"], "outside"),
        "bad eval system spec": (
            [*ev, "--system", "s=steer:nowhere@0.02@1-2", "--out", out / "c9"],
            "nowhere",
        ),
        "eval system gamma not a number": (
            [*ev, "--system", f"s=steer:{ex}@abc@1-2", "--out", out / "c10"],
            "abc",
        ),
        "eval system layers reversed": (
            [*ev, "--system", f"s=steer:{ex}@0.02@2-1", "--out", out / "c11"],
            "2-1",
        ),
        "eval unknown judge": (
            [*ev, "--system", "model:" + str(t), "--judges", "nope", "--out", out / "c12"],
            "nope",
        ),
        "eval no system": ([*ev, "--out", out / "c13"], "--system"),
        "sweep gammas without a negative": (
            [
                "sweep",
                *m,
                "--directions",
                ex,
                "--instructions",
                w["ins"],
                "--gammas",
                "0.01,0.02",
                "--intervals",
                "1-2",
                "--out",
                out / "c14",
            ],
            "negative",
        ),
        "sweep interval reversed": (
            [
                "sweep",
                *m,
                "--directions",
                ex,
                "--instructions",
                w["ins"],
                "--intervals",
                "2-1",
                "--out",
                out / "c15",
            ],
            "2-1",
        ),
        "unknown config key": (
            ["run", "--config", "__unknown__", "--out", out / "c16"],
            "gama_pos",
        ),
        "extract n_instructions 0": (
            [*ext, "--n-instructions", "0", "--out", out / "c17"],
            "n_instructions",
        ),
        "synthesize n 0": ([*syn, "--n", "0", "--out", out / "c18.jsonl"], "n"),
        "dpo beta 0": ([*dpo, "--pairs", w["pairs"], "--beta", "0", "--out", out / "c19"], "beta"),
        "dpo lr negative": (
            [*dpo, "--pairs", w["pairs"], "--lr=-1", "--out", out / "c20"],
            "learning_rate",
        ),
        # 10. DPO input hygiene
        "dpo duplicate records": ([*dpo, "--pairs", w["pairs"], "--out", out / "p1"], "duplicate"),
        "dpo chosen equals rejected": (
            [*dpo, "--pairs", w["same"], "--out", out / "p2"],
            "chosen == rejected",
        ),
        "dpo torn pairs file": ([*dpo, "--pairs", w["torn"], "--out", out / "p3"], "torn.jsonl"),
        "dpo pairs missing": (
            [*dpo, "--pairs", root / "none.jsonl", "--out", out / "p4"],
            "none.jsonl",
        ),
        # smaller ones
        "empty instruction in kept": (
            [*pairs, "--kept", w["empty_kept"], "--out", out / "s1"],
            "empty",
        ),
        "kept criterion without a direction": (
            [*pairs, "--kept", "__kept_other__", "--out", out / "s2"],
            "general",
        ),
    }


def test_bad_cli_inputs_give_one_line_and_exit_2(world, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    wide = save_tiny_model(tmp_path / "wide", d_model=32)
    other_kept = _jsonl(
        tmp_path / "kept_other.jsonl",
        [{"index": 0, "instruction": "tell me", "criterion": "general", "consistency": 1.0}],
    )
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(f'model = "{world["tiny"]}"\n[pairs]\ngama_pos = 0.1\n')
    cases = _cases(world)
    assert len(cases) >= 40
    failures = []
    for what, (argv, expected) in cases.items():
        argv = [str(a) for a in argv]
        if "__wide__" in argv:  # the set is for the tiny model; use it with a wider one
            argv[argv.index("--model") + 1] = str(wide)
            argv[argv.index("__wide__")] = str(world["ex"])
        argv = [
            {"__unknown__": str(unknown), "__kept_other__": str(other_kept)}.get(a, a) for a in argv
        ]
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        before = out.exists() if out else False
        try:
            line = _cli_error(capsys, argv)
        except AssertionError as e:
            failures.append(f"{what}: {e}")
            continue
        if expected not in line:
            failures.append(f"{what}: {expected!r} not in {line!r}")
        if out is not None and not before and out.is_dir() and any(out.iterdir()):
            failures.append(f"{what}: wrote {sorted(p.name for p in out.iterdir())} in {out}")
    assert not failures, "\n".join(failures)


def test_a_failed_run_does_not_poison_its_folder(world, capsys, tmp_path):
    out = tmp_path / "run"
    _cli_error(capsys, ["run", "--config", world["root"] / "frac.toml", "--out", out])
    # layers the model lacks are found before any stage works, and nothing is recorded
    line = _cli_error(capsys, ["run", "--config", world["root"] / "okrun.toml", "--out", out])
    assert "pairs.layers" in line and not out.exists()
    fixed = world["root"] / "okrun_fixed.toml"
    fixed.write_text(
        (world["root"] / "okrun.toml").read_text() + '[pairs]\nlayers = "1-2"\n', encoding="utf-8"
    )
    argv = ["run", "--config", fixed, "--out", out, "--stop-after", "extract"]
    assert main([str(a) for a in [*argv, "--no-png", "--no-progress"]]) == 0
    assert (out / "config.json").is_file()


def _api_cases(w):
    from icon2_lens.consistency.filter import FilterConfig
    from icon2_lens.directions.set import load_direction_set
    from icon2_lens.dpo.settings import DPOSettings
    from icon2_lens.evaluate.systems import parse_system
    from icon2_lens.instructions.builtin import read_instruction_file
    from icon2_lens.instructions.synthesize import SynthesisConfig
    from icon2_lens.pairs.icon2 import PairConfig
    from icon2_lens.pairs.records import check_pair_hygiene, read_pairs
    from icon2_lens.runs.config import ExperimentConfig, RunConfig

    dup = [_pair("tell me", "a story .", "no .")] * 4
    same = [_pair(f"p{i}", "x .", "x .") for i in range(4)]
    return {
        "PairConfig gamma_neg > 0": (lambda: PairConfig(gamma_neg=0.04), "gamma_neg"),
        "PairConfig gamma_pos < 0": (lambda: PairConfig(gamma_pos=-0.02), "gamma_pos"),
        "PairConfig γ⁺ = γ⁻": (lambda: PairConfig(gamma_pos=0.02, gamma_neg=0.02), "gamma"),
        "PairConfig γ NaN": (lambda: PairConfig(gamma_pos=math.nan), "finite"),
        "PairConfig huge relative γ": (lambda: PairConfig(gamma_pos=50.0), "allow_any_gamma"),
        "PairConfig batch 0": (lambda: PairConfig(batch_size=0), "batch_size"),
        "FilterConfig fraction 1.5": (lambda: FilterConfig(fraction=1.5), "fraction"),
        "FilterConfig fraction 0": (lambda: FilterConfig(fraction=0.0), "fraction"),
        "SynthesisConfig n -1": (lambda: SynthesisConfig(n=-1), "n"),
        "SynthesisConfig batch 0": (lambda: SynthesisConfig(batch_size=0), "batch_size"),
        "DPOSettings beta 0": (lambda: DPOSettings(beta=0.0), "beta"),
        "RunConfig criteria string": (
            lambda: RunConfig.from_dict({"extract": {"criteria": "honesty"}}),
            "criteria",
        ),
        "RunConfig fraction 1.5": (
            lambda: RunConfig.from_dict({"filter": {"fraction": 1.5}}),
            "fraction",
        ),
        "RunConfig wrong type": (
            lambda: RunConfig.from_dict({"pairs": {"batch_size": "8"}}),
            "batch_size",
        ),
        "ExperimentConfig n_pairs 0": (
            lambda: ExperimentConfig.from_dict({"experiment": {"n_pairs": 0}}),
            "n_pairs",
        ),
        "load NaN direction set": (lambda: load_direction_set(w["nan"] / "honesty"), "not finite"),
        "load scaled direction set": (lambda: load_direction_set(w["scaled"] / "honesty"), "unit"),
        "load cfg.json that is a list": (
            lambda: load_direction_set(w["cfglist"] / "honesty"),
            "cfg.json",
        ),
        "system spec gamma": (lambda: parse_system("steer:ex@abc@1-2"), "abc"),
        "system spec layers": (lambda: parse_system("steer:ex@0.02@2-1"), "2-1"),
        "system spec kind": (lambda: parse_system("magic:ex"), "magic"),
        "instructions not UTF-8": (lambda: read_instruction_file(w["latin1"]), "UTF-8"),
        "instructions is a directory": (lambda: read_instruction_file(w["dir"]), "directory"),
        "pairs torn file": (lambda: read_pairs(w["torn"]), "torn.jsonl"),
        "pairs duplicates": (lambda: check_pair_hygiene(dup), "duplicate"),
        "pairs chosen == rejected": (lambda: check_pair_hygiene(same), "chosen == rejected"),
    }


def test_bad_api_inputs_raise_one_clear_value_error(world):
    failures = []
    cases = _api_cases(world)
    for what, (call, expected) in cases.items():
        try:
            call()
        except ValueError as e:  # ConfigError is a ValueError
            text = str(e)
            if expected not in text or "\n" in text.strip():
                failures.append(f"{what}: {text!r}")
        except Exception as e:  # noqa: BLE001 - the failure being tested for
            failures.append(f"{what}: {type(e).__name__}: {e}")
        else:
            failures.append(f"{what}: accepted")
    assert not failures, "\n".join(failures)
    assert len(cases) + len(_cases(world)) >= 40


def test_nan_scores_are_refused_not_kept(world):
    from icon2_lens.consistency.scores import ConsistencyScores

    scores = torch.tensor([[0.1, math.nan], [0.2, 0.3]])
    with pytest.raises(ValueError, match="not finite"):
        ConsistencyScores(
            instructions=["a", "b"], criteria=["honesty", "harmlessness"], scores=scores
        )


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_ctrl_c_exits_130_with_one_line_saying_what_is_kept(capsys, monkeypatch, tmp_path):
    from icon2_lens.cli import pairs as pairs_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs_command, "run", interrupted)
    capsys.readouterr()
    assert main(["pairs", "--kept", "k.jsonl", "--out", str(tmp_path / "p")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "kept" in err[0] and "again to resume" in err[0] and str(tmp_path / "p") in err[0]
