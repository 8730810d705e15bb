"""Generation, pairs, CLI stages and DPO on the embedded model."""

import json
import subprocess
import sys

import pytest
import torch

from icon2_lens import (
    Decoding,
    ExtractConfig,
    KeptInstruction,
    PairConfig,
    SteeringSpec,
    extract_criterion,
    generate_pairs,
    get_criteria,
    render_chat,
)
from icon2_lens.model.chat import encode_prompts, pad_left
from icon2_lens.model.generate import generate_rows
from icon2_lens.pairs.margins import pair_margins

QUESTIONS = [
    "Give me a tip for sleeping better.",
    "What is 2+2?",
    "How do I apologise to a friend?",
    "Write one sentence about the sea.",
]


@pytest.fixture(scope="module")
def harmless(smol):
    cfg = ExtractConfig(n_instructions=24, n_heldout=8)
    return extract_criterion(
        smol, get_criteria(["harmlessness"])[0], config=cfg, progress=False
    ).directions


def _rows(smol):
    return encode_prompts(smol.tokenizer, [render_chat(smol.tokenizer, q) for q in QUESTIONS])


def test_fast_path_equals_hf_generate(smol):
    from transformers import AutoModelForCausalLM

    from icon2_lens.model.load import model_source

    hf = AutoModelForCausalLM.from_pretrained(model_source(smol), dtype=torch.float32).eval()
    rows = _rows(smol)
    ids, mask = pad_left(smol.tokenizer, rows)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=smol.tokenizer.pad_token_id,
        )
    ours = generate_rows(smol, rows, Decoding(max_new_tokens=24))
    stop = smol.tokenizer.eos_token_id
    for row, g in zip(ref[:, ids.shape[1] :].tolist(), ours):
        expected = row[: row.index(stop)] if stop in row else row
        assert g.token_ids == expected


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steered_fast_generation_cache_equals_no_cache(smol, harmless, positions):
    rows = _rows(smol)[:2]
    spec = SteeringSpec(
        directions=harmless,
        gamma=[0.03, -0.04],
        layers=list(range(13, 23)),
        positions=positions,
        prompt_len=1,
    )
    outs = [
        [
            g.token_ids
            for g in generate_rows(
                smol, rows, Decoding(max_new_tokens=12, use_cache=c), steering=[spec]
            )
        ]
        for c in (True, False)
    ]
    assert outs[0] == outs[1]


def test_pairs_separate_along_the_direction(smol, harmless, tmp_path):
    kept = [KeptInstruction(i, q, "harmlessness") for i, q in enumerate(QUESTIONS)]
    cfg = PairConfig(layers=tuple(range(13, 23)), max_new_tokens=40, batch_size=2)
    res = generate_pairs(smol, kept, {"harmlessness": harmless}, cfg, out=tmp_path, progress=False)
    assert res.counts["done"] == 4
    margins = pair_margins(smol, res.records + res.dropped, {"harmlessness": harmless})
    assert margins["chosen_above_rejected"] >= 0.75
    again = generate_pairs(
        smol, kept, {"harmlessness": harmless}, cfg, out=tmp_path, progress=False
    )
    assert again.records == res.records


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "icon2_lens.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_cli_stages_and_dpo(tmp_path):
    run = _cli(
        "extract",
        "--criteria",
        "helpfulness,harmlessness",
        "--n-instructions",
        "16",
        "--n-heldout",
        "8",
        "--no-figures",
        "--out",
        "ex",
        "--no-progress",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    run = _cli(
        "synthesize",
        "--n",
        "24",
        "--max-new-tokens",
        "48",
        "--out",
        "ins.jsonl",
        "--no-progress",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "near_duplicate" in run.stdout
    run = _cli(
        "filter",
        "--instructions",
        "ins.jsonl",
        "--directions",
        "ex",
        "--fraction",
        "0.25",
        "--out",
        "fi",
        "--no-png",
        "--no-progress",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    kept = [json.loads(x) for x in (tmp_path / "fi" / "kept.jsonl").read_text().splitlines()]
    assert kept and all(k["criterion"] in ("helpfulness", "harmlessness") for k in kept)
    run = _cli(
        "pairs",
        "--kept",
        "fi/kept.jsonl",
        "--directions",
        "ex",
        "--max-new-tokens",
        "32",
        "--out",
        "pa",
        "--no-progress",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    # resuming onto the same folder with other settings is refused
    run = _cli(
        "pairs",
        "--kept",
        "fi/kept.jsonl",
        "--directions",
        "ex",
        "--max-new-tokens",
        "32",
        "--gamma-pos",
        "0.05",
        "--out",
        "pa",
        "--no-progress",
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "different settings" in run.stderr
    records = [json.loads(x) for x in (tmp_path / "pa" / "pairs.jsonl").read_text().splitlines()]
    if not records:
        pytest.skip("every pair was dropped at this tiny scale")
    run = _cli(
        "dpo",
        "--pairs",
        "pa/pairs.jsonl",
        "--out",
        "dpo",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--max-length",
        "160",
        "--no-png",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "dpo" / "model" / "config.json").is_file()
