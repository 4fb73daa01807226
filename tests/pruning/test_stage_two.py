import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwa_export.errors import NuwaError
from nuwa_export.pruning import stage_two


def test_top_k_sorted_by_sequence_order():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.3]])
    assert stage_two(scores, 2).tolist() == [[1, 3]]


def test_ties_prefer_lower_position():
    scores = torch.tensor([[0.5, 0.7, 0.5, 0.5]])
    assert stage_two(scores, 2).tolist() == [[0, 1]]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 300), st.data())
def test_properties(k1, data):
    keep = data.draw(st.integers(1, k1))
    seed = data.draw(st.integers(0, 2**31 - 1))
    scores = torch.rand(2, k1, generator=torch.Generator().manual_seed(seed))
    idx = stage_two(scores, keep)
    assert idx.shape == (2, keep) and idx.dtype == torch.int64
    assert bool((idx[:, 1:] > idx[:, :-1]).all())
    for b in range(2):
        kept = scores[b, idx[b]]
        rest = scores[b, [i for i in range(k1) if i not in set(idx[b].tolist())]]
        if rest.numel():
            assert float(kept.min()) >= float(rest.max())
        one = stage_two(scores[b : b + 1], keep)
        assert torch.equal(one[0], idx[b])


@pytest.mark.parametrize("keep", [0, 6])
def test_bad_keep(keep):
    with pytest.raises(NuwaError):
        stage_two(torch.rand(1, 5), keep)
