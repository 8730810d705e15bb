import pytest
import torch

from icon2_lens.directions.fit import METHODS, fit_direction, fit_directions
from icon2_lens.directions.set import DirectionSet


def _planted(n=64, d=32, noise=0.3, seed=0, shift=4.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    neg = torch.randn(n, d, generator=g) * 3
    # the contrast's size varies across instructions, so even centred PCA sees the planted axis
    size = shift * (1 + 2 * torch.rand(n, 1, generator=g))
    pos = neg + size * u + noise * torch.randn(n, d, generator=g)
    return pos, neg, u


@pytest.mark.parametrize("method", METHODS)
def test_planted_direction_recovered(method):
    pos, neg, u = _planted()
    v, explained = fit_direction(pos - neg, method)
    assert torch.nn.functional.cosine_similarity(v, u, dim=0) > 0.99
    assert abs(float(v.norm()) - 1) < 1e-5
    assert 0 < explained <= 1


@pytest.mark.parametrize("method", METHODS)
def test_sign_oriented_towards_positive(method):
    pos, neg, u = _planted(seed=3)
    # swapping positive and negative flips the direction
    v1, _ = fit_direction(pos - neg, method)
    v2, _ = fit_direction(neg - pos, method)
    assert float(((pos - neg) @ v1).mean()) > 0
    assert torch.allclose(v1, -v2, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_bit_identical(method):
    pos, neg, _ = _planted(seed=5)
    a, _ = fit_direction(pos - neg, method)
    b, _ = fit_direction((pos - neg).clone(), method)
    assert torch.equal(a, b)


def test_mean_diff_matches_hand_computation():
    pos, neg, _ = _planted(seed=1)
    v, _ = fit_direction(pos - neg, "mean_diff")
    expected = (pos - neg).mean(0)
    assert torch.allclose(v, expected / expected.norm(), atol=1e-6)


def test_symmetric_equals_svd_of_stacked_contrasts():
    pos, neg, _ = _planted(seed=2)
    d = (pos - neg).double()
    _, _, vh = torch.linalg.svd(torch.cat([d, -d]), full_matrices=False)
    v, _ = fit_direction(pos - neg, "pca_symmetric")
    assert abs(float(torch.dot(v.double(), vh[0]).abs()) - 1) < 1e-6


def test_centred_pca_follows_variation_not_mean():
    # constant contrast along e0 + varying contrast along e1: centred PCA picks e1, the others e0
    g = torch.Generator().manual_seed(0)
    n, d = 50, 6
    diffs = torch.zeros(n, d)
    diffs[:, 0] = 5.0
    diffs[:, 1] = torch.randn(n, generator=g) * 2
    centred, _ = fit_direction(diffs, "pca", center=True)
    uncentred, _ = fit_direction(diffs, "pca", center=False)
    assert abs(float(centred[1])) > 0.99
    assert float(uncentred[0]) > 0.9


def test_single_pair():
    pos, neg, u = _planted(n=1)
    for method in ("mean_diff", "pca_symmetric"):
        v, _ = fit_direction(pos - neg, method)
        assert torch.nn.functional.cosine_similarity(v, (pos - neg)[0], dim=0) > 0.9999
    with pytest.raises(ValueError, match="at least 2"):
        fit_direction(pos - neg, "pca")


def test_bad_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        fit_direction(torch.zeros(0, 4), "pca")
    with pytest.raises(ValueError, match="identical activations"):
        fit_direction(torch.zeros(3, 4), "mean_diff")
    with pytest.raises(ValueError, match="unknown method"):
        fit_direction(torch.ones(3, 4), "ica")
    with pytest.raises(ValueError, match="NaN"):
        fit_direction(torch.full((3, 4), float("nan")), "mean_diff")
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's shape check, or ours without it
        fit_directions(torch.ones(3, 2, 4), torch.ones(3, 2, 5))


def test_fit_directions_per_layer_stats():
    pos, neg, u = _planted()
    pos3 = torch.stack([pos, pos * 2], dim=1)
    neg3 = torch.stack([neg, neg * 2], dim=1)
    vecs, stats = fit_directions(pos3, neg3, "mean_diff")
    assert vecs.shape == (2, 32)
    assert stats[1]["scale"] == pytest.approx(2 * stats[0]["scale"], rel=1e-4)
    assert stats[0]["train_paired_acc"] == 1.0
    assert stats[1]["mean_resid_norm"] == pytest.approx(2 * stats[0]["mean_resid_norm"], rel=1e-4)


def test_direction_set_indexing_and_projection():
    ds = DirectionSet(criterion="x", layers=(2, 5), vectors=torch.eye(2, 3), method="mean_diff")
    assert torch.equal(ds[5], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(ds["blocks.2.hook_resid_post"], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(KeyError, match="holds layers"):
        ds[3]
    acts = torch.arange(12.0).reshape(2, 2, 3)
    assert ds.project(acts).tolist() == [[0.0, 4.0], [6.0, 10.0]]
    with pytest.raises(ValueError, match="to match this set"):
        ds.project(torch.zeros(2, 3, 3))
    sub = ds.subset([5])
    assert sub.layers == (5,) and torch.equal(sub[5], ds[5])
