import json

import pytest

from icon2_lens.directions.criteria import (
    BUILTIN_CRITERIA,
    Criterion,
    get_criteria,
    load_criteria_file,
)
from icon2_lens.instructions.builtin import load_instructions, read_instruction_file


def test_builtin_criteria():
    names = [c.name for c in get_criteria()]
    assert names == ["general", "helpfulness", "honesty", "harmlessness"]
    assert len(BUILTIN_CRITERIA["general"].positive) > 200  # a paragraph, not a one-liner
    with pytest.raises(ValueError, match="unknown criterion"):
        get_criteria(["kindness"])


def test_toml_and_json_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[criteria]]\nname = "concise"\npositive = "Be brief."\nnegative = "Ramble."\n'
    )
    assert load_criteria_file(toml) == [
        Criterion(name="concise", positive="Be brief.", negative="Ramble.")
    ]
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"name": "a", "positive": "p", "negative": "n", "description": "d"}]))
    assert load_criteria_file(js)[0].description == "d"


@pytest.mark.parametrize(
    "body, match",
    [
        ('[[criteria]]\nname = "x"\npositive = "p"\n', "missing field.*negative"),
        ('[[criteria]]\nname = "x"\npositive = "p"\nnegative = ""\n', "non-empty"),
        ('[[criteria]]\nname = "x"\npositive = "p"\nnegative = "p"\n', "identical"),
        ('[[criteria]]\nname = "x y"\npositive = "p"\nnegative = "n"\n', "letters, digits"),
        ('[[criteria]]\nname = "x"\npositive = "p"\nnegative = "n"\ncolour = 1\n', "unknown field"),
        ("title = 1\n", "non-empty list"),
        ("[[criteria\n", "cannot parse"),
    ],
)
def test_bad_criteria_files(tmp_path, body, match):
    f = tmp_path / "c.toml"
    f.write_text(body)
    with pytest.raises(ValueError, match=match):
        load_criteria_file(f)


def test_missing_criteria_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_criteria_file(tmp_path / "none.toml")


def test_builtin_instructions_split():
    train, held = load_instructions("train"), load_instructions("heldout")
    assert len(train) >= 256 and len(held) >= 64
    assert not set(train) & set(held)
    assert len(set(train)) == len(train)
    with pytest.raises(ValueError, match="only"):
        load_instructions("train", n=10_000)


def test_instruction_files(tmp_path):
    f = tmp_path / "i.jsonl"
    f.write_text('{"instruction": "a"}\n\n{"instruction": "b"}\n')
    assert read_instruction_file(f) == ["a", "b"]
    f.write_text('{"instruction": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=":2:"):
        read_instruction_file(f)
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no instructions"):
        read_instruction_file(empty)
