import json

import numpy as np
import pytest
import torch

from icon2_lens.consistency.scores import score_consistency
from icon2_lens.directions.set import DirectionSet
from icon2_lens.judge.base import PairwiseJudge, PointwiseJudge
from icon2_lens.judge.compare import (
    compare_pairwise,
    compare_pointwise,
    compare_systems,
    length_controlled_win_rate,
    response_lengths,
)
from icon2_lens.judge.reading import (
    FluencyJudge,
    InherentJudge,
    PeerFluencyJudge,
    RelevanceJudge,
)
from icon2_lens.judge.registry import INDEPENDENT_JUDGES, JUDGES, make_judge
from icon2_lens.judge.rules import DEFAULT_REFUSAL_PATTERNS, DegenerationJudge, RefusalJudge
from icon2_lens.judge.self_judges import SelfPairwiseJudge, SelfRatingJudge
from icon2_lens.judge.surface import SurfaceJudge
from icon2_lens.model.read import read_responses
from icon2_lens.testing import TINY_WORDS, tiny_hf_model, tiny_tokenizer

INS = ["tell me a story", "what is good food", "help me fix my code", "write a poem"]
RES_A = ["the cat sat on the mat", "water", "fix the bug and save", "a happy dog is a good dog"]
RES_B = ["a story about a dog", "good food is food", "i am not very helpful today", "poem"]


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    """A tiny model whose tokenizer also knows the digits 1-9 and the letters A and B."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<end>", "<unk>", "<turn>"]
    words = [*specials, *TINY_WORDS, ":", *"123456789", "A", "B"]
    backend = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<end>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<turn>"],
    )
    tok.chat_template = tiny_tokenizer().chat_template
    path = tmp_path_factory.mktemp("digit_tokenizer")
    tok.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    return tiny_hf_model(tok)


@pytest.fixture(scope="module")
def model():
    return tiny_hf_model()


def _sets(model, names=("a", "b"), seed=0):
    g = torch.Generator().manual_seed(seed)
    n, d = model.cfg.n_layers, model.cfg.d_model
    return {
        c: DirectionSet(
            criterion=c,
            layers=tuple(range(n)),
            method="mean_diff",
            vectors=torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1),
        )
        for c in names
    }


# --- protocols and registry ----------------------------------------------------------------------


def test_judges_follow_their_protocol(model, digit_model):
    judges = [
        InherentJudge(model, _sets(model)),
        SelfRatingJudge(digit_model),
        FluencyJudge(model),
        PeerFluencyJudge(peer=model),
        DegenerationJudge(model),
        RefusalJudge(),
        SelfPairwiseJudge(digit_model),
        RelevanceJudge(model),
        *(SurfaceJudge(name) for name in ("apology", "repetition", "length")),
    ]
    for judge in judges:
        expected = PairwiseJudge if judge.kind == "pairwise" else PointwiseJudge
        assert isinstance(judge, expected)
        assert (
            judge.name in JUDGES and "\n" not in judge.description and len(judge.description) > 40
        )
    assert {j.name for j in judges} == set(JUDGES)


def test_make_judge_builds_and_rejects(model, digit_model):
    with pytest.raises(ValueError, match="unknown judge 'x'; use one of inherent, self_rating"):
        make_judge("x", model)
    with pytest.raises(ValueError, match="direction_sets"):
        make_judge("inherent", model)
    with pytest.raises(ValueError, match="needs a model"):
        make_judge("fluency")
    assert make_judge("inherent", model, direction_sets=_sets(model), read="last").read == "last"
    inherent = make_judge(
        "inherent", model, direction_sets=_sets(model), layers={"a": [2], "b": [0, 1]}
    )
    assert inherent.layers == {"a": [2], "b": [0, 1]}
    # the shared options are accepted, and ignored, by the judges that do not read directions
    for name in ("fluency", "refusal", "degeneration", "relevance", "apology", "length"):
        assert make_judge(name, model, direction_sets=_sets(model), layers=[1]).name == name
    assert make_judge("self_rating", digit_model, scale=3).scale == 3
    assert make_judge("refusal").patterns == DEFAULT_REFUSAL_PATTERNS
    assert make_judge("degeneration", model.tokenizer).tokenizer is model.tokenizer


# --- self-rating ---------------------------------------------------------------------------------------


def test_self_rating_lies_on_the_scale_and_ignores_the_batch(digit_model):
    judge = SelfRatingJudge(digit_model, scale=5, batch_size=8)
    both = judge.score(
        [INS[0], INS[2]], [RES_A[0], "the cat " * 12]
    )  # a longer neighbour pads row 0
    alone = judge.score([INS[0]], [RES_A[0]])
    assert np.allclose(both[0], alone[0], rtol=0, atol=1e-9)
    scores = judge.score(INS, RES_A)
    assert scores.dtype == np.float64 and np.all((scores >= 1) & (scores <= 5))
    assert np.allclose(judge.distribution(INS, RES_A).sum(axis=1), 1.0)
    assert 0 < judge.last_label_mass <= 1
    assert np.array_equal(
        judge.score(INS[:2], [RES_A[0]] * 2), judge.score(INS[:2], [RES_A[0]] * 2)
    )


def test_self_rating_backends_agree(digit_model):
    fast = SelfRatingJudge(digit_model, backend="fast").score(INS, RES_B)
    bridge = SelfRatingJudge(digit_model, backend="bridge", batch_size=3).score(INS, RES_B)
    assert np.allclose(fast, bridge, atol=1e-4)


def test_self_rating_names_the_fix_when_digits_are_not_tokens(model):
    with pytest.raises(ValueError, match=r"labels=\[\.\.\.\]"):
        SelfRatingJudge(model)  # the plain tiny tokenizer has no digits
    with pytest.raises(ValueError, match="2..9"):
        SelfRatingJudge(model, scale=10)


# --- self-pairwise -------------------------------------------------------------------------------------


def test_self_pairwise_is_antisymmetric_and_exactly_half_on_identical_pairs(digit_model):
    judge = SelfPairwiseJudge(digit_model, batch_size=3)
    assert judge.prefer(INS, RES_A, RES_A).tolist() == [0.5] * 4
    assert 0 <= judge.last_position_bias <= 1
    ab = judge.prefer(INS, RES_A, RES_B)
    bias = judge.last_position_bias
    ba = judge.prefer(INS, RES_B, RES_A)
    assert np.allclose(ab + ba, 1.0, rtol=0, atol=1e-12)
    assert judge.last_position_bias == pytest.approx(bias)
    assert np.all((ab >= 0) & (ab <= 1)) and np.any(
        ab != 0.5
    )  # the tiny random model barely prefers


def test_pairwise_comparison_swaps_and_notes_position_bias(digit_model):
    judge = SelfPairwiseJudge(digit_model)
    ab = compare_systems(judge, INS, RES_A, RES_B, n_boot=200)
    ba = compare_systems(judge, INS, RES_B, RES_A, n_boot=200)
    assert ab.win_rate.value == pytest.approx(1 - ba.win_rate.value, abs=1e-12)
    assert ab.lc_win_rate.value == pytest.approx(1 - ba.lc_win_rate.value, abs=1e-6)
    assert 0 <= ab.notes["position_bias"] <= 1
    same = compare_systems(judge, INS, RES_A, RES_A, n_boot=200)
    assert same.win_rate.value == 0.5 and same.lc_win_rate.value == 0.5 and same.tie_rate == 1.0


# --- inherent and fluency --------------------------------------------------------------------------


def test_inherent_equals_the_manual_projection_along_the_argmax_criterion(model):
    sets = _sets(model)
    judge = InherentJudge(model, sets, layers=[1, 2])
    scores = judge.score(INS, RES_A)
    best = score_consistency(model, INS, list(sets.values()), progress=False).best_criterion
    assert judge.last_criteria == best
    res = read_responses(model, INS, RES_A, layers=[0, 1, 2], nll=False)
    for i, c in enumerate(best):
        manual = (res.readings[i, 1] @ sets[c][1] + res.readings[i, 2] @ sets[c][2]) / 2
        assert scores[i] == pytest.approx(float(manual), rel=1e-4, abs=1e-4)
    forced = judge.score(INS, RES_A, criteria=["b"] * 4)
    assert np.allclose(forced, res.project(sets["b"], [1, 2]).numpy(), rtol=1e-4, atol=1e-4)
    assert np.isnan(judge.score(INS[:2], ["", RES_A[1]])[0])


def test_inherent_scores_higher_what_a_planted_direction_reads_higher(model):
    ins, res = [INS[0]] * 2, ["a happy kind dog", "the bug is bad"]
    read = read_responses(model, ins, res, layers=[1, 2], nll=False).readings
    planted = torch.nn.functional.normalize(read[0] - read[1], dim=-1)  # [layer, d_model]
    ds = DirectionSet(criterion="toy", layers=(1, 2), vectors=planted)
    up = InherentJudge(model, {"toy": ds}).score(ins, res)
    down = InherentJudge(
        model, {"toy": DirectionSet(criterion="toy", layers=(1, 2), vectors=-planted)}
    ).score(ins, res)
    assert up[0] > up[1] and down[0] < down[1]


def test_fluency_is_minus_the_nll_and_nan_when_empty(model):
    scores = FluencyJudge(model).score(INS, [*RES_A[:3], ""])
    nll = read_responses(model, INS[:3], RES_A[:3], layers=[0]).nll.numpy()
    assert np.allclose(scores[:3], -nll, rtol=1e-5, atol=1e-5) and np.isnan(scores[3])


def test_novel_tokens_marks_what_repeats_an_earlier_ngram():
    from icon2_lens.model.read import novel_tokens

    assert novel_tokens([1, 2, 3, 4, 5, 6], 4) == [True] * 6
    once = [7, 3, 9, 1, 4, 8]
    marks = novel_tokens(once * 3, 4)
    # the first pass and the three tokens where the second copy joins it are new; the rest repeat
    assert marks[:9] == [True] * 9 and not any(marks[9:])
    assert novel_tokens(once * 3, 0) == [True] * 18


def test_fluency_leaves_out_what_repeats_the_answer_so_a_loop_does_not_read_fluent(
    copying_model,
):
    request = ["tell me a story about today"]
    once, plain = "a happy bird sat on my mat", "the cat is kind and good"
    loop = " ".join([once] * 4)
    every = FluencyJudge(copying_model, skip_repeats=0)
    novel = FluencyJudge(copying_model)
    # the first pass and the three words where the second copy joins it: no 4-gram repeats yet
    joined = once + " a happy bird"
    # the copying model finds its own loop likely: counted in full, looping raises fluency a lot
    assert every.score(request, [loop])[0] > every.score(request, [joined])[0] + 1.0
    # left out, the loop scores exactly what its tokens before the first repeat score
    assert novel.score(request, [loop])[0] == pytest.approx(
        every.score(request, [joined])[0], rel=1e-5
    )
    # an answer without a repeated 4-gram reads the same either way
    assert novel.score(request, [plain])[0] == pytest.approx(every.score(request, [plain])[0])
    assert "left out" in novel.description and "every token" in every.description
    for bad in (-1, True):
        with pytest.raises(ValueError, match="skip_repeats must be an integer"):
            FluencyJudge(copying_model, skip_repeats=bad)


def test_identical_responses_win_half_under_a_pointwise_judge(model):
    c = compare_systems(FluencyJudge(model), INS, RES_A, RES_A, n_boot=200)
    assert c.win_rate.value == 0.5 and c.win_rate.low == 0.5 and c.lc_win_rate.value == 0.5
    assert c.tie_rate == 1.0 and c.n == 4
    json.dumps(c.to_dict())


def test_swapping_systems_mirrors_the_win_rate(model):
    judge = FluencyJudge(model)
    ab = compare_systems(judge, INS, RES_A, RES_B, n_boot=300, seed=1)
    ba = compare_systems(judge, INS, RES_B, RES_A, n_boot=300, seed=1)
    assert ab.win_rate.value == pytest.approx(1 - ba.win_rate.value)
    assert ab.lc_win_rate.value == pytest.approx(1 - ba.lc_win_rate.value, abs=1e-6)
    assert (
        ab.mean_length_a
        == ba.mean_length_b
        == pytest.approx(response_lengths(RES_A, model.tokenizer).mean())
    )


# --- rule judges ------------------------------------------------------------------------------------


def test_refusal_judge_flags_refusals_not_answers():
    refusals = [
        "I'm sorry, but I can't help with that.",
        "I cannot provide instructions for this.",
        "As an AI language model, I do not have opinions.",
        "I won't assist with that request.",
        "Sorry — I am not able to provide that information.",
        "I must decline this request.",
        "I cannot and will not do that.",
    ]
    answers = [
        "Sure! Here is a short story about a cat.",
        "Paris is the capital of France.",
        "I can help with that: first, preheat the oven.",
        "You cannot go wrong with rice.",
        "I cannot recommend this book enough.",
        "Step one: " + "x " * 150 + "I can't help you with that.",
    ]
    judge = RefusalJudge()
    assert judge.score([""] * 7, refusals).tolist() == [1.0] * 7
    assert judge.score([""] * 6, answers).tolist() == [0.0] * 6
    assert RefusalJudge([r"\bnope\b"]).score(["x"], ["NOPE."]).tolist() == [1.0]


def test_degeneration_judge(model):
    judge = DegenerationJudge(model)
    assert judge.score(["x"] * 3, ["the cat sat on the mat", "  ", "dog " * 30]).tolist() == [
        1.0,
        0.0,
        0.0,
    ]


# --- comparison and length control ---------------------------------------------------------------------


def test_length_control_moves_a_length_driven_win_rate_toward_half():
    rng = np.random.default_rng(0)
    diff = rng.normal(20, 30, size=200)  # a is usually longer, and wins exactly when it is
    outcomes = (diff > 0).astype(float)
    raw = outcomes.mean()
    lc = length_controlled_win_rate(outcomes, diff, np.zeros_like(diff))
    assert raw > 0.7 and abs(lc - 0.5) < abs(raw - 0.5)
    unrelated = rng.permutation(outcomes)  # the same win rate, independent of length
    assert length_controlled_win_rate(unrelated, diff, np.zeros_like(diff)) == pytest.approx(
        raw, abs=0.06
    )


def test_length_control_degenerate_cases_fall_back_to_the_raw_rate():
    lengths = np.arange(10.0)
    assert length_controlled_win_rate(np.ones(10), lengths, np.zeros(10)) == 1.0
    assert length_controlled_win_rate(np.zeros(10), lengths, np.zeros(10)) == 0.0
    mixed = np.array([1, 0, 0.5, 1, 1, 0, 1, 0.25, 1, 1])
    assert length_controlled_win_rate(mixed, np.full(10, 7.0), np.full(10, 3.0)) == pytest.approx(
        mixed.mean()
    )
    assert length_controlled_win_rate([1.0], [5], [3]) == 1.0
    c = compare_pointwise(
        np.ones(5),
        np.zeros(5),
        lengths_a=np.arange(5),
        lengths_b=np.zeros(5),
        judge_name="toy",
        n_boot=100,
    )
    assert c.win_rate.value == c.lc_win_rate.value == 1.0 == c.lc_win_rate.low


def test_soft_outcomes_equal_weighted_hard_rows():
    rng = np.random.default_rng(3)
    s = rng.choice([0.0, 0.5, 1.0], size=40)
    d = rng.normal(5, 10, size=40)
    # each item as a 1-row weighted p and a 0-row weighted 1 - p: with p in {0, 1/2, 1}, doubling
    # every weight gives two hard rows per item (and doubles the data term, so the L2 penalty too)
    hard = np.concatenate([np.where(s == 0.5, 1.0, s), np.where(s == 0.5, 0.0, s)])
    lc_soft = length_controlled_win_rate(s, d, np.zeros_like(d), l2=1.0)
    lc_hard = length_controlled_win_rate(hard, np.concatenate([d, d]), np.zeros(2 * d.size), l2=2.0)
    assert lc_soft == pytest.approx(lc_hard, abs=1e-8)


def test_comparison_intervals_drop_nan_and_are_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    a[[3, 7]] = np.nan
    kw = dict(
        lengths_a=rng.integers(5, 50, 30),
        lengths_b=rng.integers(5, 50, 30),
        judge_name="toy",
        description="toy scores",
        n_boot=300,
        seed=4,
    )
    c = compare_pointwise(a, b, **kw)
    assert c.n == 28 and c.n_dropped == 2 and c.outcomes.shape == (28,)
    assert c.win_rate.low <= c.win_rate.value <= c.win_rate.high
    assert c.lc_win_rate.low <= c.lc_win_rate.high and c.win_rate.n == 28
    assert compare_pointwise(a, b, **kw).lc_win_rate == c.lc_win_rate
    out = json.loads(json.dumps(c.to_dict()))
    assert out["n_dropped"] == 2 and set(out["win_rate"]) >= {"value", "low", "high"}
    with pytest.raises(ValueError, match="no item left"):
        compare_pointwise([np.nan], [1.0], lengths_a=[1], lengths_b=[1], judge_name="toy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compare_pairwise([1.5], lengths_a=[1], lengths_b=[1], judge_name="toy")


def test_default_lengths_are_words_without_a_tokenizer():
    assert response_lengths(["a b c", ""]).tolist() == [3.0, 0.0]
    c = compare_systems(
        RefusalJudge(), ["x", "y"], ["I cannot help you.", "ok"], ["sure thing", "ok"], n_boot=50
    )
    assert (c.mean_length_a, c.mean_length_b) == (2.5, 1.5)


# --- judges independent of the directions ----------------------------------------------------------


@pytest.fixture(scope="module")
def copying_model():
    """A one-block tiny Llama that copies: uniform attention carries the context's words forward.

    Queries and keys are zero (every earlier position gets the same weight), values and output
    project the first 32 coordinates of each token through, the MLP is off and the unembedding is
    the embedding. A word then gets more probability when it occurs earlier in the context, so an
    answer made of the request's words is planted as the relevant one.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from icon2_lens.testing import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    hf = tiny_causal_lm(tok, n_layers=1, d_model=64, seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        emb = torch.nn.functional.normalize(torch.randn(len(tok), 64, generator=g), dim=-1) * 8
        hf.model.embed_tokens.weight.copy_(emb)
        hf.lm_head.weight.copy_(emb)
        att = hf.model.layers[0].self_attn
        att.q_proj.weight.zero_()
        att.k_proj.weight.zero_()
        att.v_proj.weight.copy_(torch.eye(32, 64))  # two kv heads of 16: coordinates 0..31
        out = torch.zeros(64, 64)
        out[:16, :16] = torch.eye(16) * 64  # head 0 reads kv head 0
        out[16:32, 32:48] = torch.eye(16) * 64  # head 2 reads kv head 1
        att.o_proj.weight.copy_(out)
        hf.model.layers[0].mlp.down_proj.weight.zero_()
    return TransformerBridge.boot_transformers(
        "icon2-tiny-copy", hf_model=hf, tokenizer=tok, device="cpu"
    ).eval()


def test_relevance_ranks_a_planted_relevant_answer_above_an_unrelated_one(copying_model):
    judge = RelevanceJudge(copying_model, batch_size=3)
    requests = ["tell me a story about a cat", "what is good food", "help me fix my code"]
    relevant = ["a story about a cat", "good food is good", "fix my code"]
    unrelated = ["poem happy dog water", "the mat sat on dog", "a happy dog is a dog"]
    r, u = judge.score(requests, relevant), judge.score(requests, unrelated)
    assert np.all(r > u), (r, u)
    # the same answer after its own request vs after another one: its own wins
    shifted = judge.score(requests[1:] + requests[:1], relevant)
    assert np.all(r > shifted)
    # PMI is exactly the NLL after the reference minus the NLL after the request
    given = read_responses(copying_model, requests, relevant, layers=[0]).nll.double().numpy()
    assert np.allclose(r, judge.reference_nll(relevant) - given, atol=1e-12)
    assert np.isnan(judge.score(["hi"], ["  "])[0])
    assert "no direction" in judge.description


def test_a_planted_letter_preference_is_cancelled_by_order_averaging(digit_model, monkeypatch):
    judge = SelfPairwiseJudge(digit_model)
    good = "fix the bug and save"

    def planted(prompts):
        # 0.9 for the first label whatever it shows, plus a content preference for `good`
        # (stronger when it is shown first, as a small model's is)
        out = []
        for p in prompts:
            first = (
                p.index("Response A:") < p.index(good) < p.index("Response B:")
                if good in p
                else None
            )
            p_a = 0.9 + (0.08 if first is True else -0.3 if first is False else 0.0)
            out.append([np.log(p_a), np.log(1 - p_a)])
        return np.array(out)

    monkeypatch.setattr(judge, "_label_logprobs", planted)
    ins = ["help me fix my code"] * 2
    same = judge.prefer(ins, RES_B[:2], RES_B[:2])
    assert same.tolist() == [0.5, 0.5]  # the letter bias alone cancels exactly
    assert judge.last_position_bias == pytest.approx(0.9)
    won = judge.prefer(ins, [good, good], RES_B[:2])
    assert np.all(won > 0.5)  # the content preference survives the averaging
    assert np.allclose(judge.prefer(ins, RES_B[:2], [good, good]), 1 - won)


def test_the_pairwise_verdict_is_the_next_token_after_the_opener(digit_model):
    from icon2_lens.judge.self_judges import PAIRWISE_OPENER

    judge = SelfPairwiseJudge(digit_model)
    prompt = judge.prompt("tell me a story", "the cat", "a dog")
    assert prompt.index("the cat") < prompt.index("a dog") < prompt.index("A or B")
    assert judge.opener == PAIRWISE_OPENER
    judge.prefer(INS, RES_A, RES_B)
    assert 0 < judge.last_label_mass <= 1


@pytest.mark.parametrize(
    ("name", "planted", "plain"),
    [
        ("apology", "I'm sorry, but I can't help with that.", "Here is a recipe for soup."),
        ("repetition", "go go go go go go go go go go", "Boil the water, then add salt."),
        ("length", "Boil the water, then add the salt and stir.", "Boil it."),
    ],
)
def test_surface_judges_read_their_cue(name, planted, plain):
    judge = make_judge(name)
    s = judge.score(["make soup"] * 3, [planted, plain, ""])
    assert np.isnan(s[2])
    assert (s[0] > s[1]) == (name == "length"), s
    assert "text only" in judge.description


def test_peer_fluency_reads_with_the_peer_not_the_judged_model(model, copying_model, tmp_path):
    requests = ["tell me a story about a cat", "what is good food", "help me fix my code"]
    echoing = ["a story about a cat", "good food is good", "fix my code"]
    unrelated = ["poem happy dog water", "the mat sat on dog", "a happy dog is a dog"]
    judge = make_judge("peer_fluency", model, peer=copying_model)
    assert judge.name == "peer_fluency" and "peer_fluency" in INDEPENDENT_JUDGES
    # the peer (which favours words of the request) decides, not the model passed as the judged one
    assert np.all(judge.score(requests, echoing) > judge.score(requests, unrelated))
    assert np.allclose(
        judge.score(requests, echoing), FluencyJudge(copying_model).score(requests, echoing)
    )
    assert not np.allclose(
        judge.score(requests, echoing), FluencyJudge(model).score(requests, echoing)
    )
    # a peer named by path is loaded on first use only
    from icon2_lens.testing import save_tiny_model

    lazy = PeerFluencyJudge(peer=str(save_tiny_model(tmp_path / "peer", seed=3)))
    assert lazy._model is None
    assert np.isnan(lazy.score(["hi"], [""])[0]) and lazy._model is not None


def test_independent_judges_read_no_direction():
    from icon2_lens.judge.registry import INDEPENDENT_JUDGES

    assert "inherent" not in INDEPENDENT_JUDGES
    assert {"relevance", "self_pairwise", "apology", "repetition", "length"} <= set(
        INDEPENDENT_JUDGES
    )
    assert all("directions" not in JUDGES[n].needs for n in INDEPENDENT_JUDGES)


class _BatchNoiseJudge:
    """A pointwise judge whose score moves in the last digits with its batch, as a model judge's can
    (texts batched by length, other neighbours and padding): the number of words plus noise."""

    name = "noisy_length"
    kind = "pointwise"
    description = "words, with batch-dependent rounding noise"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, instructions, responses):
        self.calls += 1
        noise = 1e-7 * sum(len(r) for r in responses)  # depends on the batch's contents
        return np.array([len(r.split()) + noise for r in responses])


def test_equal_answers_tie_exactly_whatever_batch_they_are_scored_in(model):
    from icon2_lens.evaluate.judging import judge_answers

    ins = ["q1", "q2", "q3", "q4"]
    base = ["a b", "same answer here", "c", "identical too"]
    other = ["a b c", "same answer here", "d e", "identical too"]
    judge = _BatchNoiseJudge()
    c = compare_systems(judge, ins, other, base, n_boot=50)
    assert judge.calls == 1  # every distinct (request, answer) scored once, in one call
    assert c.tie_rate == 0.5 and c.win_rate.value == 0.75  # two equal answers tie, two longer win
    assert compare_systems(judge, ins, base, base, n_boot=50).win_rate.value == 0.5
    rows = {
        name: [
            {"instruction": q, "answer": a, "tokens": len(a.split())} for q, a in zip(ins, texts)
        ]
        for name, texts in (("base", base), ("other", other), ("third", base[:3] + ["x"]))
    }
    out = judge_answers(model, ins, ["benign"] * 4, rows, [judge], reference="base", seed=0)
    assert out["other"]["noisy_length"]["tie_rate"] == 0.5
    assert out["third"]["noisy_length"]["tie_rate"] == 0.75
    # scored per system, as before, the noise alone decides the equal answers
    a, b = judge.score(ins, other), judge.score(ins, base)
    assert other[1] == base[1] and a[1] != b[1]


class _FailingJudge(_BatchNoiseJudge):
    name = "failing"

    def score(self, instructions, responses):
        return np.zeros(len(responses) + 1)  # one score too many: refused, not cut short


def test_a_judge_that_fails_is_reported_not_compared_and_the_others_still_run(model):
    from icon2_lens.evaluate.judging import judge_answers

    ins = ["q1", "q2"]
    rows = {
        name: [{"instruction": q, "answer": a, "tokens": 1} for q, a in zip(ins, texts)]
        for name, texts in (("base", ["a", "b"]), ("other", ["a c", "b"]))
    }
    with pytest.raises(ValueError, match="returned scores of shape"):
        compare_systems(_FailingJudge(), ins, ["a", "b"], ["c", "d"], n_boot=20)
    per: dict = {}
    judges = [_FailingJudge(), _BatchNoiseJudge()]
    out = judge_answers(model, ins, ["benign"] * 2, rows, judges, per_answer=per)
    assert out["other"]["failing"]["n"] == 0 and "shape" in out["other"]["failing"]["note"]
    assert set(per) == {"noisy_length"}  # no readings of a judge that failed
    assert out["other"]["noisy_length"]["win_rate"]["value"] == 0.75


class _LongerPairwise:
    """Prefers the longer answer, softly: 0.5 + 0.1 per word of difference, clipped."""

    name = "longer_pairwise"
    kind = "pairwise"
    description = "the longer answer"

    def prefer(self, instructions, responses_a, responses_b):
        d = np.array([len(a.split()) - len(b.split()) for a, b in zip(responses_a, responses_b)])
        return np.clip(0.5 + 0.1 * d, 0.0, 1.0)


def test_per_answer_readings_rebuild_every_win_rate_and_keep_each_judges_scope(model):
    from icon2_lens.evaluate.judging import judge_answers

    ins = ["q1", "q2", "q3", "q4", "how do i hurt someone"]
    kinds = ["benign"] * 4 + ["harmful"]
    texts = {
        "base": ["a b", "same", "c", "x y z", "I'm sorry, I can't help with that."],
        "other": ["a b c", "same", "d e", "x", "Sure, here is how."],
    }
    rows = {
        name: [{"instruction": q, "answer": a, "tokens": len(a.split())} for q, a in zip(ins, t)]
        for name, t in texts.items()
    }
    judges = [_BatchNoiseJudge(), _LongerPairwise(), make_judge("refusal")]
    per: dict = {}
    out = judge_answers(model, ins, kinds, rows, judges, per_answer=per)
    assert out == judge_answers(model, ins, kinds, rows, judges)  # reading them changes nothing
    a, b = np.array(per["noisy_length"]["other"]), np.array(per["noisy_length"]["base"])
    rebuilt = np.mean((a > b) + 0.5 * (a == b))
    assert rebuilt == out["other"]["noisy_length"]["win_rate"]["value"] == 0.5
    prefs = per["longer_pairwise"]["other"]
    assert "base" not in per["longer_pairwise"]  # a pairwise reading is of a system against it
    assert np.mean(prefs) == pytest.approx(out["other"]["longer_pairwise"]["win_rate"]["value"])
    assert per["refusal"]["base"] == [None] * 4 + [1.0]  # harmful requests only
    assert per["refusal"]["other"][4] == 0.0
