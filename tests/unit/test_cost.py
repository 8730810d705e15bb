"""The cost meter counts what the forward loops feed the model."""

from icon2_lens.model.chat import render_chat
from icon2_lens.model.cost import CostMeter, count_forward
from icon2_lens.model.generate import Decoding, generate
from icon2_lens.model.read import read_responses
from icon2_lens.testing import tiny_model


def test_generation_tokens_are_prompt_plus_generated_positions():
    model = tiny_model()
    prompts = [
        render_chat(model.tokenizer, q) for q in ("hello world", "a much longer question here")
    ]
    meter = CostMeter()
    with meter.stage("gen"):
        out = generate(model, prompts, Decoding(max_new_tokens=5, stop=False), batch_size=2)
    prompt_tokens = sum(
        len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
    )
    cost = meter["gen"]
    assert cost.generated_tokens == 2 * 5 == sum(len(g.token_ids) for g in out)
    # the first pass reads the prompts, each later pass one new position per row
    assert cost.forward_tokens == prompt_tokens + 2 * 4
    assert cost.passes == 5
    assert cost.seconds > 0


def test_reading_counts_every_real_token_and_nesting_goes_to_the_inner_stage():
    model = tiny_model()
    meter = CostMeter()
    with meter.stage("outer"):
        count_forward(3)
        with meter.stage("inner"):
            res = read_responses(model, ["hello world"], ["some answer"], layers=[0])
    assert meter["outer"].forward_tokens == 3
    assert meter["inner"].forward_tokens > int(res.n_tokens[0])
    assert meter["outer"].seconds >= meter["inner"].seconds
    again = CostMeter.from_dict(meter.to_dict())
    assert again.to_dict() == meter.to_dict()
