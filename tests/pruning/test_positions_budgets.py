import pytest
import torch

from nuwa_export.errors import NuwaError
from nuwa_export.pruning import (
    budgets,
    decode_position,
    default_keep,
    position_ids,
    resolve_budgets,
)


def test_positions_keep_the_spatial_frame():
    pos = position_ids(3, torch.tensor([[0, 5, 575]]), 2, 576)
    assert pos.tolist() == [[0, 1, 2, 3, 8, 578, 579, 580]]
    assert decode_position(3, 2, 576, 0) == 581 and decode_position(3, 2, 576, 4) == 585


def test_positions_one_dimensional_and_batched():
    idx = torch.tensor([[1, 2], [0, 3]])
    assert position_ids(1, idx, 1, 4).tolist() == [[0, 2, 3, 5], [0, 1, 4, 5]]
    assert position_ids(1, idx[0], 1, 4).tolist() == [0, 2, 3, 5]


def test_positions_unpruned_are_contiguous():
    assert position_ids(4, torch.arange(10), 3, 10).tolist() == list(range(17))


@pytest.mark.parametrize("keep,k1,k2", [(64, 112, 16), (128, 224, 32), (192, 336, 48)])
def test_budget_table(keep, k1, k2):
    assert budgets(keep) == (k1, k2)
    assert (16 * k1 + 16 * k2) / 32 == keep


def test_budget_odd_keep_keeps_the_average():
    for keep in range(1, 100):
        k1, k2 = budgets(keep)
        assert 1 <= k2 <= k1 and k1 + k2 == 2 * keep


def test_default_keep():
    assert default_keep(576) == 64
    assert default_keep(256) == 28
    assert default_keep(64) == 8
    assert default_keep(16) == 4


def test_resolve_defaults_and_overrides():
    b = resolve_budgets(576, 32)
    assert (b.keep, b.k1, b.k2, b.layer) == (64, 112, 16, 16)
    b = resolve_budgets(576, 32, keep=64, k1=200, k2=10, layer=8)
    assert (b.k1, b.k2, b.layer) == (200, 10, 8)
    off = resolve_budgets(576, 32, prune=False)
    assert not off.prune and off.k1 == 576


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"keep": 0}, "at least 1"),
        ({"keep": 600}, "more than the 576"),
        ({"keep": 400}, "K1=700"),
        ({"k1": 10, "k2": 20}, "K2=20 must be between 1 and K1=10"),
        ({"k2": 0}, "K2=0"),
        ({"layer": 0}, "between 1 and 31"),
        ({"layer": 32}, "between 1 and 31"),
    ],
)
def test_resolve_refuses(kw, match):
    with pytest.raises(NuwaError, match=match):
        resolve_budgets(576, 32, **kw)
