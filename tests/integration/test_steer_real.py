"""Steering the embedded model: KV-cached generation equals full re-runs; γ = 0 changes nothing."""

import pytest
import torch

from icon2_lens import (
    ExtractConfig,
    SteeringSpec,
    extract_criterion,
    get_criteria,
    render_chat,
    steer,
)
from icon2_lens.model.chat import tokenize_prompts


@pytest.fixture(scope="module")
def helpful(smol):
    cfg = ExtractConfig(
        method="mean_diff", n_instructions=16, n_heldout=8, layers=tuple(range(10, 20))
    )
    return extract_criterion(
        smol, get_criteria(["helpfulness"])[0], config=cfg, progress=False
    ).directions


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steered_greedy_generation_cache_equals_no_cache(smol, helpful, positions):
    texts = [
        render_chat(smol.tokenizer, q)
        for q in ("Give me a tip for sleeping better.", "What is 2+2?")
    ]
    ids, mask = tokenize_prompts(smol.tokenizer, texts)
    outs = []
    for cache in (True, False):
        spec = SteeringSpec(
            directions=helpful, gamma=[0.05, -0.05], positions=positions, prompt_len=ids.shape[1]
        )
        with steer(smol, spec):
            outs.append(
                smol.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=12,
                    do_sample=False,
                    use_past_kv_cache=cache,
                    stop_at_eos=False,
                    verbose=False,
                    return_type="tokens",
                )
            )
    assert torch.equal(outs[0], outs[1])


def test_gamma_zero_exact(smol, helpful):
    texts = [render_chat(smol.tokenizer, "Name a fruit.")]
    ids, mask = tokenize_prompts(smol.tokenizer, texts)
    with torch.no_grad():
        base = smol(ids, attention_mask=mask)
        with steer(smol, SteeringSpec(directions=helpful, gamma=0.0)):
            zero = smol(ids, attention_mask=mask)
    assert torch.equal(base, zero)
