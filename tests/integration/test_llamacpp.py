"""An exported control vector steers llama.cpp as icon2-lens steers the same model (needs llama-cpp-python).

Skipped unless ``llama_cpp`` is importable (``pip install llama-cpp-python``; it compiles llama.cpp,
a few minutes). The numbers of one run are in docs/interop.md.
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_llamacpp.py"


def _check_module():
    spec = importlib.util.spec_from_file_location("check_llamacpp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llama_cpp_steered_by_the_exported_vector_agrees_with_icon2_lens():
    out = _check_module().run_check(gamma=0.05, layers=(13, 22), new_tokens=16)
    changed, total = (int(x) for x in out["greedy_changed"].split("/"))
    assert changed >= 1  # the control vector changes what llama.cpp writes
    for row in out["logprob_shift"]:
        # the shift steering causes is the same in both runtimes, up to Q4_1 activation noise
        assert row["r_top50"] > 0.9, row
        assert row["mean_abs_shift_top50_ours"] > 0.05, row  # and it is a real shift
