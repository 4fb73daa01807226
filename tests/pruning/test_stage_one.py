"""stage_one against a deliberately plain loop / full-matrix implementation, and its properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwa_export.errors import NuwaError
from nuwa_export.pruning import (
    aggregation_weights,
    default_per_region,
    separation,
    stage_one,
)


def plain_stage_one(agg, sim, a, h, w, keep, n, distance=280.0, percentile=0.55):
    """One image, float64, loops and the full N×N matrix: docs/algorithm.md §2 read literally."""
    agg, sim, a = (np.asarray(x, np.float64) for x in (agg, sim, a))
    cands = []
    for ry in range(h // 2):
        for rx in range(w // 2):
            slots = [2 * ry * w + 2 * rx, 2 * ry * w + 2 * rx + 1, (2 * ry + 1) * w + 2 * rx, (2 * ry + 1) * w + 2 * rx + 1]
            cands += sorted(slots, key=lambda p: (-a[p], p))[:n]
    anchors = sorted(sorted(cands, key=lambda p: (-a[p], p))[:keep])
    u = sim / np.maximum(np.linalg.norm(sim, axis=1, keepdims=True), 1e-12)
    full = np.maximum(u @ u.T, 0.0)
    for i in range(h * w):
        for j in range(h * w):
            d = math.hypot(i // w - j // w, i % w - j % w)
            full[i, j] *= 1.0 - min(1.0, d / math.sqrt(distance))
    s = a[anchors]
    t = np.quantile(s, percentile)  # linear interpolation
    weights = np.zeros((keep, h * w))
    for k, i in enumerate(anchors):
        row = full[i].copy()
        if s[k] >= t:
            row = np.zeros(h * w)
            row[i] = full[i, i]
        row = row / (row.sum() + 1e-8)
        row[i] = 1.0
        weights[k] = row
    return weights @ agg, np.array(anchors), weights


def _inputs(seed, b, n, d=24, ds=16, ties=False):
    g = torch.Generator().manual_seed(seed)
    agg = torch.randn(b, n, d, generator=g)
    sim = torch.randn(b, n, ds, generator=g)
    a = torch.rand(b, n, generator=g)
    if ties:  # few distinct values: exercises the deterministic tie order
        a = torch.floor(a * 4) / 4
    return agg, sim, a


@pytest.mark.parametrize(
    "grid,keep,seed,ties",
    [((16, 16), 49, 0, False), ((24, 24), 112, 1, False), ((8, 12), 30, 2, True), ((24, 24), 336, 3, False), ((10, 10), 1, 4, True)],
)
def test_matches_plain_implementation(grid, keep, seed, ties):
    h, w = grid
    agg, sim, a = _inputs(seed, 2, h * w, ties=ties)
    tokens, idx = stage_one(agg, sim, a, grid, keep)
    n = default_per_region(keep, grid)
    for bi in range(2):
        want_tokens, want_idx, _ = plain_stage_one(agg[bi], sim[bi], a[bi], h, w, keep, n)
        np.testing.assert_array_equal(idx[bi].numpy(), want_idx)
        np.testing.assert_allclose(tokens[bi].numpy(), want_tokens, atol=1e-5, rtol=1e-5)


def test_matches_plain_with_options():
    agg, sim, a = _inputs(7, 1, 144)
    tokens, idx = stage_one(agg, sim, a, (12, 12), 20, per_region=3, distance=40.0, percentile=0.3)
    want_tokens, want_idx, _ = plain_stage_one(agg[0], sim[0], a[0], 12, 12, 20, 3, 40.0, 0.3)
    np.testing.assert_array_equal(idx[0].numpy(), want_idx)
    np.testing.assert_allclose(tokens[0].numpy(), want_tokens, atol=1e-5, rtol=1e-5)


def test_budget_table_per_region():
    """docs/algorithm.md §1 table: 576 patches, K1 112/224/336 → n 1/2/3."""
    assert [default_per_region(k, (24, 24)) for k in (112, 224, 336)] == [1, 2, 3]
    assert default_per_region(576, (24, 24)) == 4


even = st.integers(4, 12).map(lambda x: 2 * x)


@st.composite
def problems(draw):
    h, w = draw(even), draw(even)
    n = h * w
    keep = draw(st.integers(1, 3 * n // 4))
    return h, w, keep, draw(st.integers(0, 2**31 - 1)), draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(problems())
def test_properties(problem):
    h, w, keep, seed, ties = problem
    n = h * w
    agg, sim, a = _inputs(seed, 3, n, ties=ties)
    tokens, idx = stage_one(agg, sim, a, (h, w), keep)
    assert tokens.shape == (3, keep, agg.shape[-1]) and tokens.dtype == agg.dtype
    assert idx.shape == (3, keep) and idx.dtype == torch.int64
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "indices sorted and unique"
    assert int(idx.min()) >= 0 and int(idx.max()) < n

    per_region = default_per_region(keep, (h, w))
    cands = separation(a, (h, w), per_region)
    for bi in range(3):
        chosen = set(idx[bi].tolist())
        assert chosen <= set(cands[bi].tolist()), "anchors come from the candidates"
        left = [c for c in cands[bi].tolist() if c not in chosen]
        if left:
            assert float(a[bi, idx[bi]].min()) >= float(a[bi, left].max()), "alignment keeps the top scores"
        regions = [(p // w // 2, p % w // 2) for p in cands[bi].tolist()]
        assert max(regions.count(r) for r in set(regions)) == per_region

    weights = aggregation_weights(sim, a, idx, (h, w))
    scores = a.gather(1, idx)
    threshold = torch.quantile(scores, 0.55, dim=1, keepdim=True)
    pillar = scores >= threshold
    self_w = weights.gather(2, idx[..., None])[..., 0]
    assert bool((self_w == 1.0).all()), "self weight overridden to 1.0"
    assert bool((weights >= 0).all())
    others = weights.clone().scatter_(2, idx[..., None], 0.0)
    assert bool((others[pillar] == 0).all()), "pillars keep only themselves"
    # collectors: the non-self weights are the normalised row minus the normalised self entry (< 1)
    assert bool((others.sum(-1)[~pillar] < 1.0 + 1e-5).all())
    # nothing beyond the reach sqrt(distance)
    ys, xs = torch.arange(n) // w, torch.arange(n) % w
    far = ((ys[None, None] - (idx // w)[..., None]) ** 2 + (xs[None, None] - (idx % w)[..., None]) ** 2) >= 280
    assert bool((weights[far] == 0).all())
    # pillars are exactly their own feature
    own = agg.gather(1, idx[..., None].expand(-1, -1, agg.shape[-1]))
    assert torch.equal(tokens[pillar], own[pillar])
    # batch independence
    for bi in range(3):
        t1, i1 = stage_one(agg[bi : bi + 1], sim[bi : bi + 1], a[bi : bi + 1], (h, w), keep)
        assert torch.equal(i1[0], idx[bi])
        torch.testing.assert_close(t1[0], tokens[bi], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_kept_and_pillars_exact(dtype):
    agg, sim, a = _inputs(5, 2, 256)
    agg = agg.to(dtype)
    tokens, idx = stage_one(agg, sim.to(dtype), a.to(dtype), (16, 16), 49)
    assert tokens.dtype == dtype
    scores = a.to(dtype).float().gather(1, idx)
    pillar = scores >= torch.quantile(scores, 0.55, dim=1, keepdim=True)
    own = agg.gather(1, idx[..., None].expand(-1, -1, agg.shape[-1]))
    assert torch.equal(tokens[pillar], own[pillar])


def test_collector_weights_as_specified():
    """A hand-checkable case: 4x4 grid, a collector's weights are relu(cos)·penalty / (sum + 1e-8)."""
    n, h, w = 16, 4, 4
    sim = torch.zeros(1, n, 2)
    sim[0, :, 0] = 1.0
    sim[0, 5, :] = torch.tensor([1.0, 1.0])  # cos 1/sqrt(2) with the others
    sim[0, 10, :] = torch.tensor([-1.0, 0.0])  # cos -1: never merged
    a = torch.arange(n, dtype=torch.float32)[None] / n
    idx = torch.tensor([[0, 15]])  # scores 0 and 15/16: 0 is a collector, 15 a pillar
    wts = aggregation_weights(sim, a, idx, (h, w), distance=8.0)
    reach = math.sqrt(8.0)
    raw = torch.zeros(n)
    for j in range(n):
        cos = float(torch.nn.functional.cosine_similarity(sim[0, 0], sim[0, j], dim=0))
        d = math.hypot(j // w, j % w)
        raw[j] = max(cos, 0.0) * (1 - min(1.0, d / reach))
    want = raw / (raw.sum() + 1e-8)
    want[0] = 1.0
    torch.testing.assert_close(wts[0, 0], want, atol=1e-6, rtol=1e-6)
    assert wts[0, 0, 10] == 0 and wts[0, 1].tolist() == [0.0] * 15 + [1.0]


@pytest.mark.parametrize(
    "grid,keep,match",
    [((15, 16), 10, "even sides"), ((16, 16), 0, "between 1"), ((16, 16), 257, "between 1"), ((8, 8), 10, "has 64")],
)
def test_bad_arguments(grid, keep, match):
    agg, sim, a = _inputs(0, 1, 240 if grid == (15, 16) else 256)
    with pytest.raises(NuwaError, match=match):
        stage_one(agg, sim, a, grid, keep)


def test_per_region_too_small_for_keep():
    agg, sim, a = _inputs(0, 1, 64)
    with pytest.raises(NuwaError, match="cannot keep"):
        stage_one(agg, sim, a, (8, 8), 20, per_region=1)
