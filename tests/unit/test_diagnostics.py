import pandas as pd
import pytest
import torch

from icon2_lens.directions.diagnostics import (
    criterion_cosines,
    layer_cosines,
    layer_table,
    recommend_interval,
)
from icon2_lens.directions.set import DirectionSet


def _ds(vectors, layers=None):
    layers = layers or tuple(range(vectors.shape[0]))
    return DirectionSet(criterion="c", layers=layers, vectors=vectors, method="mean_diff")


def test_accuracies_by_hand():
    # one layer, direction e0; projections are the first coordinate
    u = torch.tensor([[1.0, 0.0]])
    pos_tr = torch.tensor([[[2.0, 0]], [[4.0, 0]]])
    neg_tr = torch.tensor([[[0.0, 0]], [[2.0, 0]]])  # midpoint = (3 + 1) / 2 = 2
    pos_ho = torch.tensor([[[3.0, 9]], [[1.0, 9]], [[5.0, 0]]])
    neg_ho = torch.tensor([[[1.0, 0]], [[2.5, 0]], [[0.0, 0]]])
    t = layer_table(_ds(u), pos_tr, neg_tr, pos_ho, neg_ho)
    assert t.heldout_paired_acc[0] == pytest.approx(2 / 3)  # pair 2 is misordered
    # single: pos 3 > 2 yes, 1 no, 5 yes; neg 1 < 2 yes, 2.5 no, 0 yes -> 4 / 6
    assert t.heldout_single_acc[0] == pytest.approx(4 / 6)
    gap = (3 + 1 + 5) / 3 - (1 + 2.5 + 0) / 3
    pooled = ((torch.tensor([3.0, 1, 5]).var() + torch.tensor([1.0, 2.5, 0]).var()) / 2).sqrt()
    assert t.separation[0] == pytest.approx(gap / float(pooled), rel=1e-5)


def test_planted_layer_found():
    # signal only at layers 3-5 of 9; the interval must cover them
    g = torch.Generator().manual_seed(0)
    n, L, d = 40, 9, 8
    neg = torch.randn(n, L, d, generator=g)
    pos = neg.clone()
    for layer in (3, 4, 5):
        pos[:, layer, 0] += 3.0
    pos += 0.5 * torch.randn(n, L, d, generator=g)
    diffs = (pos - neg)[:20]
    vecs = torch.nn.functional.normalize(diffs.mean(0), dim=-1)
    t = layer_table(_ds(vecs), pos[:20], neg[:20], pos[20:], neg[20:])
    assert recommend_interval(t, L) == (3, 5)
    acc = t.set_index("layer").heldout_single_acc
    assert acc[4] > 0.85 and acc[0] < 0.75


def test_interval_rules():
    flat = pd.DataFrame({"layer": range(30), "heldout_single_acc": [1.0] * 30})
    assert recommend_interval(flat, 30) == (10, 19)  # ties go to the middle third
    assert recommend_interval(flat, 30, width=4) == (13, 16)
    one = pd.DataFrame({"layer": [7], "heldout_single_acc": [0.8]})
    assert recommend_interval(one, 30) == (7, 7)
    with pytest.raises(ValueError, match="empty"):
        recommend_interval(flat.iloc[:0], 30)


def test_cosine_tables():
    a = _ds(torch.eye(3, 4))
    m = layer_cosines(a)
    assert m.shape == (3, 3) and m.values.diagonal().tolist() == [1.0, 1.0, 1.0]
    b = DirectionSet(criterion="d", layers=(1, 2), vectors=-torch.eye(4)[1:3], method="mean_diff")
    cos = criterion_cosines([a, b])
    assert sorted(cos.layer.unique()) == [1, 2]
    row = cos[(cos.layer == 1) & (cos.criterion_a == "c") & (cos.criterion_b == "d")]
    assert float(row.cosine.iloc[0]) == pytest.approx(-1.0)
