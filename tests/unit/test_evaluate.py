"""`icon2-lens eval` and its pieces on a tiny model: systems, answers that resume, comparisons."""

import json

import pytest

from icon2_lens.evaluate.judging import evaluate_systems
from icon2_lens.evaluate.systems import SystemSpec, answer_instructions, parse_system
from icon2_lens.judge.registry import make_judge
from icon2_lens.model.generate import Decoding
from icon2_lens.testing import save_tiny_model


def test_parse_system_forms():
    assert parse_system("base") == SystemSpec("base", "base")
    assert parse_system("model:runs/x/dpo/model") == SystemSpec(
        "model", "model", "runs/x/dpo/model"
    )
    assert parse_system("runs/x/dpo/model").kind == "model"
    assert parse_system("alignez:d@0.5", "az") == SystemSpec("az", "alignez", "d", 0.5)
    assert parse_system("steer:d@0.02@13-22") == SystemSpec("steer", "steer", "d", 0.02, "13-22")
    for bad, msg in (
        ("alignez:d@x", "must be a number"),
        ("steer:d@0.1", "steer:DIR@GAMMA@LAYERS"),
        ("alignez:d@nan", "finite"),
        ("", "empty system"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_system(bad)


RECORDS = [
    {"instruction": "tell me a story", "kind": "benign"},
    {"instruction": "write a poem about food", "kind": "benign"},
    {"instruction": "help me make a bad plan", "kind": "harmful"},
]


def test_a_system_against_itself_ties_and_answers_resume(tiny, tmp_path):
    judges = [make_judge("fluency", tiny), make_judge("refusal"), make_judge("degeneration", tiny)]
    systems = [SystemSpec("base", "base"), SystemSpec("again", "base")]
    res = evaluate_systems(
        tiny,
        systems,
        RECORDS,
        judges,
        out=tmp_path,
        decoding=Decoding(max_new_tokens=5),
        progress=False,
    )
    for judge, c in res["comparisons"]["again"].items():
        if c["n"]:  # the tiny model's answers can be empty: nothing for fluency to score
            assert c["win_rate"]["value"] == 0.5 and c["tie_rate"] == 1.0, judge
    assert res["comparisons"]["again"]["degeneration"]["n"] == 3
    assert res["comparisons"]["again"]["refusal"]["n"] == 1  # harmful requests only
    assert res["n"] == 3 and res["n_harmful"] == 1
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [x["instruction"] for x in lines] == [r["instruction"] for r in RECORDS]
    scores = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [x["instruction"] for x in scores] == [r["instruction"] for r in RECORDS]
    assert [x["refusal"]["again"] is None for x in scores] == [True, True, False]
    assert all(x["degeneration"]["base"] == x["degeneration"]["again"] for x in scores)
    # a finished answers file is reused; one for other instructions is refused
    path = tmp_path / "answers" / "base.jsonl"
    before = path.read_text()
    answer_instructions(
        SystemSpec("base", "base"),
        tiny,
        [r["instruction"] for r in RECORDS],
        Decoding(max_new_tokens=5),
        out=path,
    )
    assert path.read_text() == before
    with pytest.raises(ValueError, match="other instructions"):
        answer_instructions(
            SystemSpec("base", "base"),
            tiny,
            ["something else"],
            Decoding(max_new_tokens=5),
            out=path,
        )


def test_bad_system_lists(tiny, tmp_path):
    judges = [make_judge("refusal")]
    with pytest.raises(ValueError, match="reference system"):
        evaluate_systems(tiny, [SystemSpec("a", "base")], RECORDS, judges, out=tmp_path)
    with pytest.raises(ValueError, match="unique"):
        evaluate_systems(tiny, [SystemSpec("base", "base")] * 2, RECORDS, judges, out=tmp_path)
    with pytest.raises(ValueError, match="no instructions"):
        evaluate_systems(tiny, [SystemSpec("base", "base")], [], judges, out=tmp_path)


def test_cli_eval_compares_another_model_with_the_base(tmp_path, capsys):
    from icon2_lens.cli import main

    base = save_tiny_model(tmp_path / "base", judge_labels=True)
    other = save_tiny_model(tmp_path / "other", judge_labels=True, seed=1)
    ins = tmp_path / "ins.jsonl"
    ins.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    code = main(
        [
            "eval",
            "--model",
            str(base),
            "--system",
            f"seed1=model:{other}",
            "--instructions",
            str(ins),
            "--judges",
            "self_pairwise,fluency,refusal",
            "--max-new-tokens",
            "5",
            "--out",
            str(tmp_path / "ev"),
            "--no-progress",
        ]
    )
    assert code == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(res["comparisons"]["seed1"]) == {"self_pairwise", "fluency", "refusal"}
    out = capsys.readouterr().out
    assert "seed1" in out and "win rate" in out
    # the inherent judge needs directions: a clear error, not a crash
    code = main(
        [
            "eval",
            "--model",
            str(base),
            "--system",
            f"model:{other}",
            "--instructions",
            str(ins),
            "--judges",
            "inherent",
            "--out",
            str(tmp_path / "ev2"),
            "--no-progress",
        ]
    )
    assert code == 2 and "direction" in capsys.readouterr().err


def test_a_steered_system_at_gamma_zero_answers_like_the_base(tiny, tmp_path):
    from icon2_lens.directions.criteria import get_criteria
    from icon2_lens.directions.extract import ExtractConfig, run_extraction

    run_extraction(
        tiny,
        get_criteria(["helpfulness"]),
        config=ExtractConfig(n_instructions=8, n_heldout=4),
        out=tmp_path / "ex",
        progress=False,
    )
    ins = [r["instruction"] for r in RECORDS]
    decoding = Decoding(max_new_tokens=5)
    base = answer_instructions(SystemSpec("base", "base"), tiny, ins, decoding)
    zero = answer_instructions(
        parse_system(f"steer:{tmp_path / 'ex'}@0.0@0-2"), tiny, ins, decoding
    )
    assert [a["answer"] for a in zero] == [a["answer"] for a in base]
    pushed = answer_instructions(
        parse_system(f"steer:{tmp_path / 'ex'}@5.0@0-2"), tiny, ins, decoding
    )
    assert [a["answer"] for a in pushed] != [a["answer"] for a in base]


def test_answers_are_reused_only_with_the_settings_that_made_them(tiny, tmp_path):
    """Finding 1: another decoding, system spec or base model under the same name is refused."""
    from icon2_lens.evaluate.systems import settings_path
    from icon2_lens.testing import tiny_model

    ins = [r["instruction"] for r in RECORDS]
    path = tmp_path / "answers" / "s.jsonl"
    short = Decoding(max_new_tokens=4)
    first = answer_instructions(SystemSpec("s", "base"), tiny, ins, short, out=path)
    sidecar = settings_path(path)
    assert sidecar == tmp_path / "answers" / "s.settings.json"
    recorded = json.loads(sidecar.read_text())
    assert recorded["decoding"] == short.to_dict() and recorded["system"]["kind"] == "base"
    answers, settings = path.read_bytes(), sidecar.read_bytes()
    stamp = sidecar.stat().st_mtime_ns
    # equal settings: reused, nothing rewritten
    again = answer_instructions(SystemSpec("s", "base"), tiny, ins, short, out=path)
    assert again == first and path.read_bytes() == answers
    assert sidecar.read_bytes() == settings and sidecar.stat().st_mtime_ns == stamp
    refusals = {
        "decoding": (SystemSpec("s", "base"), tiny, Decoding(max_new_tokens=48)),
        "model_fingerprint": (SystemSpec("s", "base"), tiny_model(seed=1), short),
        "system": (SystemSpec("s", "steer", str(tmp_path), 0.5, "0-2"), tiny, short),
    }
    for key, (spec, model, decoding) in refusals.items():
        with pytest.raises(ValueError, match=rf"other settings \(differences in: .*{key}"):
            answer_instructions(spec, model, ins, decoding, out=path)
    assert path.read_bytes() == answers and sidecar.read_bytes() == settings
    # answers without their settings (an older icon2-lens) are not trusted either
    sidecar.unlink()
    with pytest.raises(ValueError, match="settings are not recorded"):
        answer_instructions(SystemSpec("s", "base"), tiny, ins, short, out=path)


def test_settings_left_without_answers_are_replaced(tiny, tmp_path):
    """A run killed after recording the settings but before the answers leaves nothing to protect."""
    from icon2_lens.evaluate.systems import settings_path

    ins = [r["instruction"] for r in RECORDS]
    path = tmp_path / "s.jsonl"
    settings_path(path).write_text('{"decoding": {"max_new_tokens": 99}}\n')
    rows = answer_instructions(
        SystemSpec("s", "base"), tiny, ins, Decoding(max_new_tokens=4), out=path
    )
    assert len(rows) == 3 and path.is_file()
    assert json.loads(settings_path(path).read_text())["decoding"]["max_new_tokens"] == 4


def test_a_retrained_model_in_the_same_folder_is_not_reused(tiny, tmp_path):
    from icon2_lens.evaluate.systems import source_digest

    folder = save_tiny_model(tmp_path / "m")
    spec = SystemSpec("m", "model", str(folder))
    before = source_digest(spec)
    assert before is not None and source_digest(SystemSpec("b", "base")) is None
    save_tiny_model(folder, seed=1)  # other weights, same path
    assert source_digest(spec) != before
    assert source_digest(SystemSpec("h", "model", "some/hub-id")) is None
