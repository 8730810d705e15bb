import pytest

from icon2_lens.model.hooks import (
    normalize_layers,
    parse_layers,
    resid_hook_name,
    validate_hook_names,
)


def test_normalize_layers():
    assert normalize_layers(None, 4) == [0, 1, 2, 3]
    assert normalize_layers([3, -1, 0], 4) == [0, 3]
    with pytest.raises(ValueError, match=r"0\.\.3"):
        normalize_layers([4], 4)
    with pytest.raises(ValueError, match="empty"):
        normalize_layers([], 4)
    with pytest.raises((ValueError, TypeError)):  # beartype under pytest, ours otherwise
        normalize_layers([1.5], 4)


def test_parse_layers():
    assert parse_layers("all", 5) == list(range(5))
    assert parse_layers("1-3", 5) == [1, 2, 3]
    assert parse_layers("0,-1", 5) == [0, 4]
    with pytest.raises(ValueError, match="cannot read"):
        parse_layers("a-b", 5)
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("2-9", 5)


def test_hook_names(tiny):
    assert resid_hook_name(2, "resid_mid") == "blocks.2.hook_resid_mid"
    with pytest.raises(ValueError, match="unknown site"):
        resid_hook_name(0, "resid")
    validate_hook_names(tiny, ["blocks.0.hook_resid_post"])
    with pytest.raises(KeyError, match="did you mean"):
        validate_hook_names(tiny, ["blocks.0.hook_resid_pots"])
