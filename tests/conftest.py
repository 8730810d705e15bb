"""Shared fixtures: offline, seeded, and a guard that no test leaves a hook attached."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(42)
    yield


@pytest.fixture(autouse=True)
def _no_leaked_hooks(request):
    yield
    for obj in list(request.node.funcargs.values()):
        hook_dict = getattr(obj, "hook_dict", None)
        if hook_dict is None:
            continue
        leaked = [
            n
            for n, hp in hook_dict.items()
            if getattr(hp, "fwd_hooks", None) or getattr(hp, "bwd_hooks", None)
        ]
        assert not leaked, f"hooks left attached: {leaked[:5]}"


@pytest.fixture
def tiny():
    from icon2_lens.testing import tiny_model

    return tiny_model()


def _tiny_experiment_config(model_dir, **over):
    """A tiny experiment config: every source, AlignEZ, two pairs each, six held-out instructions.
    ``over`` updates sections key by key (``experiment={"sources": ["sp"]}`` keeps the other keys)."""
    from icon2_lens.runs.experiment import load_experiment_config

    sections = {
        "experiment": {
            "sources": ["icon2", "sp", "sampling_ranking", "self_rewarding", "icon2_unfiltered"],
            "n_instructions": 3,
            "n_pairs": 2,
            "alignez": True,
        },
        "extract": {
            "criteria": ["helpfulness", "harmlessness"],
            "n_instructions": 12,
            "n_heldout": 6,
        },
        "synthesize": {"n": 96, "max_new_tokens": 10, "batch_size": 16},
        "filter": {"fraction": 1.0},
        "pairs": {
            "layers": "0-2",
            "gamma_pos": 2.0,  # a random tiny model needs strong pushes
            "gamma_neg": -2.0,
            "allow_any_gamma": True,
            "max_new_tokens": 8,
        },
        "baselines": {"n_samples": 3, "max_new_tokens": 8, "temperature": 1.0},
        "dpo": {"per_device_train_batch_size": 2, "max_length": 64, "learning_rate": 1e-3},
        "alignez": {
            "n_queries": 4,
            "description_tokens": 6,
            "response_tokens": 8,
            "do_sample": True,
        },
        "eval": {"n_benign": 4, "n_harmful": 2, "max_new_tokens": 6},
    }
    for key, value in over.items():
        if isinstance(value, dict) and key in sections:
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return load_experiment_config(model=str(model_dir), **sections)


@pytest.fixture
def lenient_cleaning(monkeypatch):
    """The tiny model writes random words: let every synthesized sample through the request heuristics."""
    import icon2_lens.instructions.synthesize as synthesize

    real = synthesize.clean_instructions
    monkeypatch.setattr(
        synthesize,
        "clean_instructions",
        lambda texts, **k: real(texts, **{**k, "min_words": 1, "min_chars": 1}),
    )


@pytest.fixture
def tiny_experiment_model(tmp_path_factory):
    """A tiny model directory whose tokenizer knows the self-judges' labels and whose attention reads
    the system prompt."""
    from icon2_lens.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_xp"), judge_labels=True, attentive=True)


@pytest.fixture
def tiny_experiment_config():
    """Builds a tiny experiment config: ``tiny_experiment_config(model_dir, **overrides)``."""
    return _tiny_experiment_config
