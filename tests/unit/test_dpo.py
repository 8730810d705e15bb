"""Unit tests of icon2_lens.dpo on a tiny random Llama saved to disk (offline, CPU, seconds)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from icon2_lens import testing
from icon2_lens.cli import main
from icon2_lens.dpo.curves import check_reward_saturation, plot_reward_curves
from icon2_lens.dpo.settings import DPOSettings
from icon2_lens.dpo.train import train_dpo
from icon2_lens.dpo.trainer import make_dpo_trainer, to_hf_dataset
from icon2_lens.pairs.records import read_pairs, validate_pairs
from icon2_lens.testing import tiny_tokenizer

# A learning rate large enough to move tiny random weights in a couple of steps (as TRL's tests do).
FAST = {"learning_rate": 1e-2, "warmup_ratio": 0.0, "per_device_train_batch_size": 4, "png": False}
PROMPTS = [
    "tell me a story",
    "write a poem about a cat",
    "explain how to save money",
    "make a plan for my trip",
    "what is good food",
    "help me fix my code",
    "tell me about the dog",
    "write a short email",
]


def tiny_causal_lm(tok, *, seed: int = 0):
    """A plain tiny Llama (no bridge), as saved to a model directory."""
    return testing.tiny_causal_lm(tok, n_layers=2, seed=seed)


def conversational(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "chosen": [
                {"role": "assistant", "content": "i am happy to help , here is a good answer ."}
            ],
            "rejected": [{"role": "assistant", "content": "no . you are bad and rude ."}],
            "icon2_index": i,
            "icon2_criterion": "helpfulness",
            "icon2_gamma_pos": 0.03,
            "icon2_gamma_neg": -0.03,
            "icon2_layers": [0, 1],
            "icon2_site": "resid_post",
        }
        for i in range(n)
    ]


def standard(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": f"user : {PROMPTS[i % len(PROMPTS)]} assistant :",
            "chosen": " here is a good answer .",
            "rejected": " no .",
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def tok():
    return tiny_tokenizer()


@pytest.fixture
def tiny_dir(tmp_path, tok) -> Path:
    path = tmp_path / "tiny"
    tiny_causal_lm(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def logits(model, tok, text: str = "<bos> tell me a story") -> torch.Tensor:
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


# --- reading and validating ------------------------------------------------------------------


def test_read_pairs_skips_blank_lines_and_names_malformed_line(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", standard(2))
    good.write_text(good.read_text() + "\n   \n", encoding="utf-8")
    assert read_pairs(good) == standard(2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(standard(1)[0]) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: malformed JSON"):
        read_pairs(bad)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: expected a JSON object"):
        read_pairs(not_object)


def test_read_pairs_empty_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no preference records"):
        read_pairs(empty)


def test_validate_pairs_formats():
    assert validate_pairs(conversational(2)) == "conversational"
    assert validate_pairs(standard(2)) == "standard"


def _broken(kind: str) -> list[dict]:
    recs = conversational(3)
    if kind == "missing":
        del recs[1]["rejected"]
    elif kind == "empty_content":
        recs[1]["chosen"] = [{"role": "assistant", "content": "  "}]
    elif kind == "empty_list":
        recs[1]["prompt"] = []
    elif kind == "no_role":
        recs[1]["prompt"] = [{"content": "hello"}]
    elif kind == "user_completion":
        recs[1]["rejected"] = [{"role": "user", "content": "no ."}]
    elif kind == "mixed_formats":
        recs[1] = standard(1)[0]
    elif kind == "mixed_fields":
        recs[1]["chosen"] = "a string"
    elif kind == "empty_standard":
        recs = standard(3)
        recs[1]["prompt"] = ""
    return recs


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", r"records\[1\] lacks 'rejected'"),
        ("empty_content", r"records\[1\]\['chosen'\]\[0\] has empty"),
        ("empty_list", r"records\[1\]\['prompt'\] is an empty message list"),
        ("no_role", r"records\[1\]\['prompt'\]\[0\] must be a message"),
        ("user_completion", r"records\[1\]\['rejected'\] holds a 'user' turn"),
        ("mixed_formats", r"records\[1\] is in standard format but records\[0\] is conversational"),
        ("mixed_fields", r"records\[1\] mixes field types"),
        ("empty_standard", r"records\[1\]\['prompt'\] is empty"),
    ],
)
def test_validate_pairs_errors_name_the_record(kind, message):
    with pytest.raises(ValueError, match=message):
        validate_pairs(_broken(kind))


def test_validate_pairs_no_records():
    with pytest.raises(ValueError, match="no preference records"):
        validate_pairs([])


def test_to_hf_dataset_drops_provenance_unless_asked():
    recs = conversational(3)
    recs[0]["coeff"] = 1.0  # neither a TRL field nor provenance: always dropped
    assert to_hf_dataset(recs).column_names == ["prompt", "chosen", "rejected"]
    kept = to_hf_dataset(recs, keep_provenance=True)
    assert set(kept.column_names) == {
        "prompt",
        "chosen",
        "rejected",
        "icon2_index",
        "icon2_criterion",
        "icon2_gamma_pos",
        "icon2_gamma_neg",
        "icon2_layers",
        "icon2_site",
    }
    assert kept["icon2_layers"][2] == [0, 1]
    assert kept["prompt"][1] == recs[1]["prompt"]


# --- settings and trainer --------------------------------------------------------------------


def test_settings_validate_and_build_a_cpu_config(tmp_path):
    with pytest.raises(ValueError, match="beta=-1.0"):
        DPOSettings(beta=-1.0)
    cfg = DPOSettings().to_dpo_config(tmp_path, max_steps=3)
    assert (cfg.use_cpu, cfg.bf16, cfg.fp16, cfg.gradient_checkpointing) == (
        True,
        False,
        False,
        False,
    )
    assert cfg.warmup_steps == 0.1 and cfg.max_steps == 3 and cfg.beta == DPOSettings().beta
    assert cfg.save_strategy == "no" and cfg.report_to in ("none", [], ["none"])


def test_make_dpo_trainer_unknown_override_raises_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"'learnin_rate' \(did you mean learning_rate"):
        make_dpo_trainer(tmp_path / "does-not-exist", conversational(2), learnin_rate=1e-5)


def test_make_dpo_trainer_ref_is_frozen_copy_and_trl_sees_only_pair_columns(tiny_dir, tmp_path):
    trainer = make_dpo_trainer(
        tiny_dir, conversational(4), output_dir=tmp_path / "run", max_steps=1, weight_decay=0.5
    )
    assert (trainer.args.max_steps, trainer.args.weight_decay) == (1, 0.5)  # both kinds of override
    disk = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ref, policy = trainer.ref_model, trainer.model
    assert ref is not policy
    assert not any(p.requires_grad for p in ref.parameters())
    for (name, p), q, r in zip(disk.named_parameters(), policy.parameters(), ref.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r), name
    assert not any(c.startswith("icon2_") for c in trainer.train_dataset.column_names)


def test_make_dpo_trainer_refuses_unsourced_bridge_and_reloads_sourced_one(tiny_dir, tmp_path, tok):
    from icon2_lens.model.load import load_model
    from icon2_lens.testing import tiny_hf_model

    with pytest.raises(ValueError, match="not loaded by icon2_lens.model.load.load_model"):
        make_dpo_trainer(tiny_hf_model(tok), conversational(2), output_dir=tmp_path / "a")
    bridge = load_model(tiny_dir)
    trainer = make_dpo_trainer(bridge, conversational(2), output_dir=tmp_path / "b", max_steps=1)
    assert trainer.model is not bridge.original_model
    assert not any(
        type(m).__module__.startswith("transformer_lens") for m in trainer.model.modules()
    )


# --- training --------------------------------------------------------------------------------


def test_train_dpo_end_to_end_leaves_the_callers_model_alone(tmp_path, tok):
    from icon2_lens.model.load import load_model

    model = tiny_causal_lm(tok)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "run"
    result = train_dpo(model, conversational(8), out, tokenizer=tok, max_steps=4, **FAST)

    # the caller's model and tokenizer are untouched
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert "forward" not in vars(model) and tok.pad_token == "<pad>"
    # an ordinary HF directory that reloads to the trained weights
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    assert torch.equal(logits(reloaded, tok), logits(result.model, tok))
    bridge = load_model(result.model_dir)
    ids = torch.tensor([tok("<bos> tell me a story")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(bridge(ids), logits(reloaded, tok), atol=1e-5)
    # training moved every weight matrix the pairs reach
    changed = {k: not torch.equal(start[k], v) for k, v in reloaded.state_dict().items()}
    assert all(changed.values()), [k for k, c in changed.items() if not c]
    # the log: one entry per step with the reward metrics, and DPO learned the preference
    steps = [h for h in result.log_history if "rewards/accuracies" in h]
    assert result.n_steps == 4 and len(steps) == 4 and result.n_records == 8
    for key in (
        "loss",
        "rewards/margins",
        "rewards/chosen",
        "rewards/rejected",
        "learning_rate",
        "step",
    ):
        assert all(key in h for h in steps), key
    assert steps[-1]["rewards/margins"] > 0 and steps[-1]["loss"] < steps[0]["loss"]
    assert steps[0]["learning_rate"] == pytest.approx(FAST["learning_rate"])  # no warmup, cosine
    log = json.loads((out / "dpo_log.json").read_text())
    assert (
        log["n_records"] == 8
        and log["n_steps"] == 4
        and log["settings"]["beta"] == DPOSettings().beta
    )
    assert len(log["log_history"]) == len(result.log_history)
    assert (out / "dpo_curves.html").is_file() and not (out / "dpo_curves.png").exists()


def test_train_dpo_standard_pairs_from_a_file_is_deterministic(tiny_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", standard(8))
    runs = [
        train_dpo(str(tiny_dir), pairs, tmp_path / f"run{i}", max_steps=2, seed=3, **FAST)
        for i in range(2)
    ]
    losses = [[h["loss"] for h in r.log_history if "loss" in h] for r in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    assert runs[0].n_records == 8


def test_cli_dpo(tiny_dir, tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", conversational(4))
    args = [
        "dpo",
        "--pairs",
        str(pairs),
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tiny_dir),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--no-png",
    ]
    assert main(args) == 0
    assert (tmp_path / "o" / "model" / "config.json").is_file()
    capsys.readouterr()
    args[2] = str(tmp_path / "missing.jsonl")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.jsonl" in err[0]


# --- diagnostics -----------------------------------------------------------------------------


def _history(accuracies: list[float]) -> list[dict]:
    rows = [
        {"step": i + 1, "loss": 0.6, "rewards/accuracies": a, "rewards/margins": a / 10}
        for i, a in enumerate(accuracies)
    ]
    return [*rows, {"step": len(rows), "train_runtime": 1.0, "train_loss": 0.5}]


def test_check_reward_saturation():
    n = 50
    early = [0.0, 0.5] + [1.0] * (n - 2)  # the Icon² App. I shape: near-perfect almost at once
    slow = [min(1.0, i / 40) for i in range(n)]  # reaches 1 late
    noisy_late = [0.5, 0.75] * 15 + [1.0] * 20  # saturates, but only after 60 % of training
    message = check_reward_saturation(_history(early))
    assert message is not None and "step 5 of 50" in message
    assert check_reward_saturation(_history(slow)) is None
    assert check_reward_saturation(_history(noisy_late)) is None
    assert check_reward_saturation(_history([0.0, 1.0, 1.0])) is None  # too short to judge
    assert check_reward_saturation(_history(early), threshold=1.0, early_fraction=0.05) is None


def test_plot_reward_curves():
    fig = plot_reward_curves(_history([0.0, 0.5, 1.0]))
    assert [t.name for t in fig.data] == ["rewards/accuracies", "rewards/margins"]
    assert list(fig.data[0].x) == [1, 2, 3]
    with pytest.raises(ValueError, match="no 'rewards/accuracies'"):
        plot_reward_curves([{"train_runtime": 1.0}])


def test_the_report_and_the_training_log_use_one_saturation_rule():
    from icon2_lens.dpo.curves import SaturationRule, saturation_steps

    shapes = {
        "early": [0.0, 0.5] + [1.0] * 48,
        "slow": [min(1.0, i / 40) for i in range(50)],
        "late": [0.5, 0.75] * 15 + [1.0] * 20,
        "two-step spike": [0.0, 1.0, 1.0]
        + [0.5] * 47,  # a mean over 2 steps would call this saturated
    }
    curves = {
        k: [{"step": i + 1, "accuracy": a, "margin": 0.0} for i, a in enumerate(v)]
        for k, v in shapes.items()
    }
    table = saturation_steps(curves).set_index("source")
    for name, accuracies in shapes.items():
        flagged = check_reward_saturation(_history(accuracies)) is not None
        assert bool(table.loc[name, "saturated early"]) == flagged, name
    assert not table.loc["two-step spike", "saturated early"] and SaturationRule().window == 3
    assert f"(mean of {SaturationRule().window})" in " ".join(table.columns)


def test_length_aware_and_robust_options_reach_trl_and_are_checked():
    from icon2_lens.dpo.settings import DPOSettings

    cfg = DPOSettings(ld_alpha=0.5, label_smoothing=0.1).to_dpo_config("/tmp/unused")
    assert cfg.ld_alpha == 0.5 and cfg.label_smoothing == 0.1
    assert DPOSettings().to_dpo_config("/tmp/unused").ld_alpha is None
    for bad in ({"ld_alpha": 1.5}, {"label_smoothing": 0.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DPOSettings(**bad)


def _chosen_logprob(model, tok, record) -> float:
    """Mean log-probability per token of the chosen completion after its prompt."""
    prompt = tok(record["prompt"])["input_ids"]
    full = tok(record["prompt"] + record["chosen"])["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0, :-1]
    picked = logp.gather(-1, ids[0, 1:, None])[len(prompt) - 1 :, 0]
    return float(picked.mean())


def test_sft_weight_adds_a_chosen_likelihood_term_that_keeps_chosen_answers_likely(
    tiny_dir, tmp_path, tok
):
    pairs = standard(8)
    runs = {
        w: train_dpo(str(tiny_dir), pairs, tmp_path / f"w{w}", max_steps=4, sft_weight=w, **FAST)
        for w in (0.0, 1.0)
    }
    first = {w: next(h for h in r.log_history if "loss" in h) for w, r in runs.items()}
    # step 1: policy == reference, so the DPO part is log 2 and the rest is w * chosen NLL > 0
    assert first[0.0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert first[1.0]["loss"] > first[0.0]["loss"] + 0.5
    start = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    before = _chosen_logprob(start, tok, pairs[0])
    after = {w: _chosen_logprob(r.model.eval(), tok, pairs[0]) for w, r in runs.items()}
    assert after[1.0] > after[0.0] and after[1.0] > before
    log = json.loads((tmp_path / "w1.0" / "dpo_log.json").read_text())
    assert log["settings"]["sft_weight"] == 1.0
    with pytest.raises(ValueError, match="sft_weight"):
        DPOSettings(sft_weight=-0.1)
    with pytest.raises(ValueError, match="drop loss_type"):
        DPOSettings(sft_weight=0.5).to_dpo_config("/tmp/unused", loss_type=["ipo"])
    assert DPOSettings().to_dpo_config("/tmp/unused").loss_type == ["sigmoid"]


# --- answers cut at the token limit ----------------------------------------------------------


def _own_ids(tok, answer) -> list[int]:
    text = answer if isinstance(answer, str) else answer[-1]["content"]
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("make", [conversational, standard])
def test_a_pair_with_a_cut_answer_trains_no_end_token_on_either_side(tiny_dir, tmp_path, tok, make):
    # (chosen finished, rejected finished): cut chosen, cut rejected, both ended, made elsewhere
    flags = [(False, True), (True, False), (True, True), (None, None)]
    pairs = [
        {**r, "icon2_chosen_finished": c, "icon2_rejected_finished": j}
        for r, (c, j) in zip(make(4), flags)
    ]
    built = {
        mode: make_dpo_trainer(
            tiny_dir, pairs, output_dir=tmp_path / mode, max_steps=1, cut_answers=mode
        ).train_dataset
        for mode in ("open", "closed")
    }
    for i, (c, j) in enumerate(flags):
        for side in ("chosen", "rejected"):
            closed, opened = built["closed"][i][f"{side}_ids"], built["open"][i][f"{side}_ids"]
            own = _own_ids(tok, pairs[i][side])
            assert closed[: len(own)] == own and len(closed) > len(own)  # TRL closes every answer
            assert opened == (own if False in (c, j) else closed), (i, side)
    assert not any(col.startswith("icon2_") for col in built["open"].column_names)
    assert not any(col.startswith("icon2_") for col in built["closed"].column_names)


def test_train_dpo_records_the_opened_answers_and_refuses_an_unknown_mode(tiny_dir, tmp_path):
    pairs = [
        {**r, "icon2_chosen_finished": i % 2 == 0, "icon2_rejected_finished": True}
        for i, r in enumerate(conversational(4))
    ]
    train_dpo(str(tiny_dir), pairs, tmp_path / "run", max_steps=1, **FAST)
    log = json.loads((tmp_path / "run" / "dpo_log.json").read_text())
    assert log["settings"]["cut_answers"] == "open"
    assert log["opened_cut_answers"] == {"chosen": 2, "rejected": 2}
    with pytest.raises(ValueError, match="cut_answers"):
        DPOSettings(cut_answers="half")
