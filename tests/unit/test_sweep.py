import pandas as pd
import pytest
import torch

from icon2_lens.directions.set import DirectionSet
from icon2_lens.judge.reading import score_responses
from icon2_lens.model.chat import render_chat
from icon2_lens.model.collect import collect_resid
from icon2_lens.pairs.sweep import choose_setting, summarize_sweep


def _ds(model):
    v = torch.nn.functional.normalize(
        torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    return DirectionSet(criterion="toy", layers=(0, 1, 2), vectors=v, method="mean_diff")


def test_score_responses_matches_direct_computation(tiny):
    tok = tiny.tokenizer
    ins = ["tell me a story", "what is good food", "help me"]
    res = ["the cat sat on the mat", "water", "i am very happy today and you"]
    ds = _ds(tiny)
    out = score_responses(tiny, ins, res, [ds] * 3, layers=[[1, 2]] * 3, batch_size=2, read="last")
    mean = score_responses(tiny, ins, res, [ds] * 3, layers=[[1, 2]] * 3, batch_size=2)
    for i in range(3):
        prompt = tok(render_chat(tok, ins[i]), add_special_tokens=False)["input_ids"]
        answer = tok(res[i], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        logp = torch.log_softmax(tiny(ids)[0].float(), -1)
        nll = -torch.stack([logp[len(prompt) + k - 1, t] for k, t in enumerate(answer)]).mean()
        assert out["nll"][i].item() == pytest.approx(nll.item(), rel=1e-4)
        acts = collect_resid(
            tiny, [render_chat(tok, ins[i]) + res[i]], layers=[1, 2], progress=False
        )[0]
        proj = (acts[0] @ ds[1] + acts[1] @ ds[2]) / 2
        assert out["projection"][i].item() == pytest.approx(proj.item(), rel=1e-4, abs=1e-4)
        assert out["n_tokens"][i].item() == len(answer)
        # read="mean": the projection averaged over the response's own positions
        with torch.no_grad(), tiny.hooks(fwd_hooks=[]):
            _, cache = tiny.run_with_cache(
                ids, names_filter=lambda n: n.endswith("hook_resid_post")
            )
        per_pos = [
            cache[f"blocks.{layer}.hook_resid_post"][0, len(prompt) :] @ ds[layer]
            for layer in (1, 2)
        ]
        expected = torch.stack(per_pos).mean(dim=1).mean()
        assert mean["projection"][i].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-4)
        assert mean["nll"][i].item() == pytest.approx(out["nll"][i].item(), rel=1e-6)


def _responses(rows):
    return pd.DataFrame(
        rows,
        columns=[
            "interval",
            "gamma",
            "index",
            "score",
            "nll",
            "repetition",
            "length",
            "finished",
            "degenerate",
        ],
    )


def test_degenerate_pairs_count_as_losses_and_the_clearest_interval_wins():
    rows = []
    for label, spread in (("a", 1.0), ("b", 0.1)):
        for i in range(10):
            noise = spread * ((i % 3) - 1)  # gaps vary more in interval "a"
            rows += [
                (label, 0.0, i, 0.0, 1.0, 0.0, 50, True, False),
                (label, 0.02, i, 2.0 + noise, 1.1, 0.0, 50, True, False),
                # γ⁻ = −0.02: always below chosen, but degenerate on 2 of 10 instructions
                (label, -0.02, i, -1.0, 1.1, 0.0, 50, True, i < 2),
                (label, -0.04, i, -2.0, 1.2, 0.0, 50, True, False),
            ]
    result = summarize_sweep(_responses(rows))
    row = result.pairs[
        (result.pairs["interval"] == "a") & (result.pairs["gamma_neg"] == -0.02)
    ].iloc[0]
    assert row["win"] == 1.0 and row["usable"] == 0.8 and row["win_usable"] == 0.8
    choice = choose_setting(result, min_win=0.9, rule="inherent")
    assert choice["gamma_neg"] == -0.04  # −0.02 loses its degenerate pairs: usable win 0.8 < 0.9
    assert choice["interval"] == "b"  # same win rates, but "b" separates its pairs more clearly
    assert choice["effect"] > 10


def test_choose_setting_follows_the_rule():
    rows = []
    # chosen quality: 0.04 scores highest but is not fluent (nll jump); 0.02 is the best fluent γ⁺
    plan = {
        0.0: (0.0, 1.0),
        0.02: (1.0, 1.1),
        0.04: (2.0, 2.0),
        -0.02: (-0.1, 1.1),
        -0.04: (-1.0, 1.2),
        -0.06: (-2.0, 1.5),
    }
    for i in range(10):
        for g, (score, nll) in plan.items():
            # γ⁻ = −0.02 beats γ⁺ = 0.02 on 3 of 10 instructions: win 0.7 < 0.9
            s = 1.5 if g == -0.02 and i < 3 else score
            rows.append(("10-19", g, i, s, nll, 0.0, 50, True, False))
    result = summarize_sweep(_responses(rows))
    choice = choose_setting(result, min_win=0.9, nll_tolerance=0.25, rule="inherent")
    assert choice["gamma_pos"] == 0.02
    assert choice["gamma_neg"] == -0.04  # mildest γ⁻ with win ≥ 0.9 (−0.02 wins only 0.7)
    assert choice["win"] == 1.0
    none = choose_setting(result, min_win=1.1, rule="inherent")
    assert choice["rule"] == "inherent" and none["rule"] == "inherent"
    assert "reason" in none


def _planted_surface(one_sided_better=False):
    """A planted score surface for the independent rule (one interval, 20 instructions).

    Relevance: unsteered 1.0; γ⁺ = 0.02 is the most relevant fluent setting (1.5), 0.04 more
    relevant still but not fluent. γ⁻ = −0.01 is barely less relevant (wins 0.6); −0.02 is
    clearly less relevant but every rejected answer opens with an apology (a surface cue);
    −0.04 is clearly less relevant with no cue; −0.06 too, but harsher. The inherent score
    prefers every push along the direction, as it does by construction.
    """
    plan = {  # γ: (inherent score, nll, relevance)
        0.0: (0.0, 1.0, 1.0),
        0.02: (1.0, 1.1, 0.5 if one_sided_better else 1.5),
        0.04: (2.0, 2.0, 3.0),
        -0.01: (-0.5, 1.0, None),
        -0.02: (-1.0, 1.1, 0.2),
        -0.04: (-2.0, 1.2, 0.3),
        -0.06: (-3.0, 1.4, -0.5),
    }
    topics = ["soup", "bread", "tea", "rice", "eggs"]
    rows = []
    for i in range(20):
        for g, (score, nll, rel) in plan.items():
            if rel is None:  # −0.01 is less relevant on 12 of 20 only
                rel = 0.5 if i < 12 else 2.0
            words = f"here is how to cook {topics[i % 5]} step {i} with care and salt"
            opener = "I'm sorry," if g == -0.02 else "Well now,"  # as many words either way
            text = f"{opener} {words} {abs(g)}"
            rows.append(("13-22", g, i, score, nll, rel, 0.0, 50, True, False, text))
    return pd.DataFrame(
        rows,
        columns=[
            "interval",
            "gamma",
            "index",
            "score",
            "nll",
            "relevance",
            "repetition",
            "length",
            "finished",
            "degenerate",
            "text",
        ],
    )


def test_the_independent_rule_follows_relevance_and_refuses_a_surface_cue():
    result = summarize_sweep(_planted_surface())
    cue = result.pairs[(result.pairs["gamma_pos"] == 0.02) & (result.pairs["gamma_neg"] == -0.02)]
    assert cue["win_independent"].iloc[0] == 1.0 and cue["cue_strength"].iloc[0] == 1.0
    choice = choose_setting(result, min_win=0.9)
    assert choice["rule"] == "independent"
    assert choice["gamma_pos"] == 0.02  # 0.04 is more relevant but not fluent
    assert choice["gamma_neg"] == -0.04  # −0.01 wins too rarely, −0.02 differs by an apology
    assert choice["win"] == 1.0 and choice["cue_strength"] < 0.7
    tried = {t["gamma_neg"]: t for t in choice["rejected_tried"]}
    assert tried[-0.02]["cue"] in {"apology_opener", "opening 'i'm sorry'", "opening 'well now'"}
    assert tried[-0.02]["cue_strength"] == 1.0 and tried[-0.01]["win"] == 0.6
    # the inherent rule on the same surface picks the apology γ⁻: it cannot see the cue
    assert choose_setting(result, min_win=0.9, rule="inherent")["gamma_neg"] == -0.01


def test_the_independent_rule_falls_back_to_one_sided_pairs_or_says_why_not():
    result = summarize_sweep(_planted_surface(one_sided_better=True))
    choice = choose_setting(result, min_win=0.9)
    assert choice["gamma_pos"] == 0.0 and choice["one_sided"]  # steering up lowers relevance
    assert choice["gamma_neg"] == -0.04
    from dataclasses import replace

    from icon2_lens.pairs.sweep_rule import SweepConfig

    none = choose_setting(result, replace(SweepConfig(), one_sided=False), min_win=0.9)
    assert "reason" in none  # no positive γ reads as relevant as the unsteered answer
    strict = choose_setting(result, min_win=1.1)
    assert "reason" in strict and strict["candidates"]
    with pytest.raises(ValueError, match="relevance"):
        choose_setting(summarize_sweep(_planted_surface().drop(columns="relevance")))


@pytest.mark.parametrize("read", ["mean", "last"])
def test_fast_and_bridge_readings_agree_and_project_any_direction(tiny, read):
    from icon2_lens.model.read import read_responses

    ins = ["tell me a story", "what is good food", "help me", "why"]
    res = ["the cat sat on the mat", "water", "i am very happy today and you", ""]
    fast = read_responses(tiny, ins, res, layers=[0, 2], read=read, batch_size=3)
    bridge = read_responses(
        tiny, ins, res, layers=[0, 2], read=read, batch_size=3, backend="bridge"
    )
    assert torch.allclose(fast.readings, bridge.readings, atol=1e-5)
    assert torch.allclose(fast.nll[:3], bridge.nll[:3], atol=1e-5) and torch.isnan(fast.nll[3])
    ds = _ds(tiny)
    direct = score_responses(tiny, ins, res, [ds] * 4, layers=[[0, 2]] * 4, read=read)
    assert torch.allclose(fast.project(ds), direct["projection"], atol=1e-5)
    with pytest.raises(ValueError, match="were not read"):
        fast.project(ds, layers=[1])


@pytest.mark.parametrize("backend", ["auto", "bridge"])
def test_projection_only_skips_the_logits(tiny, backend):
    from icon2_lens.model.read import read_responses

    ins, res = ["tell me a story", "why"], ["the cat sat on the mat", "water"]
    full = read_responses(tiny, ins, res, layers=[0, 1], backend=backend)
    cheap = read_responses(tiny, ins, res, layers=[0, 1], backend=backend, nll=False)
    assert torch.allclose(full.readings, cheap.readings, atol=1e-6) and torch.isnan(cheap.nll).all()
