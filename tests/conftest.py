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
        leaked = [n for n, hp in hook_dict.items() if getattr(hp, "fwd_hooks", None) or getattr(hp, "bwd_hooks", None)]
        assert not leaked, f"hooks left attached: {leaked[:5]}"


@pytest.fixture
def tiny():
    from icon2_lens.testing import tiny_model

    return tiny_model()
