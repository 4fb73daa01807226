"""Qwen2.5-VL stage one against a deliberately plain loop implementation, and its properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwa_export.errors import NuwaError
from nuwa_export.models.families.qwen2_5_vl.budgets import PERCENTILE as QWEN_PERCENTILE
from nuwa_export.models.families.qwen2_5_vl.budgets import (
    REACH_FACTOR as QWEN_REACH_FACTOR,
)
from nuwa_export.pruning import (
    aggregation_weights,
    diagonal_reach,
    keep_fraction,
    padded_anchors,
    padded_grid,
)
from nuwa_export.pruning.spec import StageOneSpec, run_stage_one

NEG_INF = float("-inf")


def qwen_reach(grid):
    """Qwen2.5-VL's swarm reach: 0.8 of the padded grid's diagonal."""
    return diagonal_reach(grid, QWEN_REACH_FACTOR)


def qwen_stage_one(feat, sim, a, grid, keep, *, per_region, reach=None):
    """Stage one as the reference and the export run it (``pruning.spec.run_stage_one``), with
    Qwen2.5-VL's settings (``models.families.qwen2_5_vl.budgets.stage_one_spec``: reach², quantile 0.1, no self override)."""
    distance = (qwen_reach(grid) if reach is None else reach) ** 2
    tokens, idx, _ = run_stage_one(feat, sim, a, grid, keep, StageOneSpec(per_region, distance, QWEN_PERCENTILE, self_weight=False))
    return tokens, idx


def plain_qwen_stage_one(feat, sim, a, h, w, s1, n, percentile=0.1):
    """One image, python floats and loops: the Qwen2.5-VL rule read literally.

    Returns ``(tokens [K][D], anchors [K], weights [K][N], k1, picked_padded)`` where
    ``picked_padded`` counts alignment picks in the padding before they are dropped.
    """
    feat, sim, a = feat.tolist(), sim.tolist(), a.tolist()
    hp, wp = h + h % 2, w + w % 2

    def score(y, x):  # padding ranks below every real slot
        return a[y * w + x] if y < h and x < w else NEG_INF

    # separation on the padded grid: regions in raster order, slots (0,0) (0,1) (1,0) (1,1)
    cands = []
    for ry in range(hp // 2):
        for rx in range(wp // 2):
            slots = []
            for dy in range(2):
                for dx in range(2):
                    y, x = 2 * ry + dy, 2 * rx + dx
                    slots.append((score(y, x), y * wp + x, y, x))
            slots.sort(key=lambda s: (-s[0], s[1]))  # higher score, then lower index
            cands += slots[:n]
    real = 0
    for c in cands:
        if c[0] != NEG_INF:
            real += 1
    k1 = min(math.ceil(h * w * s1), real)
    # alignment: global top k1 of the candidates, drop padding, unpadded raster, ascending
    ranked = sorted(cands, key=lambda s: (-s[0], s[1]))[:k1]
    anchors, picked_padded = [], 0
    for _, _, y, x in ranked:
        if y < h and x < w:
            anchors.append(y * w + x)
        else:
            picked_padded += 1
    anchors.sort()

    # swarm over the N real patches
    num = h * w
    unit = []
    for j in range(num):
        norm = math.sqrt(sum(v * v for v in sim[j]))
        unit.append([v / max(norm, 1e-12) for v in sim[j]])
    reach = 0.8 * math.sqrt((hp - 1) ** 2 + (wp - 1) ** 2)
    s = sorted(a[i] for i in anchors)
    pos = percentile * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    threshold = s[lo] + (pos - lo) * (s[hi] - s[lo])
    weights = []
    for i in anchors:
        row = []
        for j in range(num):
            cos = sum(p * q for p, q in zip(unit[i], unit[j]))
            d = math.hypot(i // w - j // w, i % w - j % w)
            row.append(max(cos, 0.0) * (1.0 - min(1.0, d / reach)))
        if a[i] >= threshold:  # pillar: only itself
            for j in range(num):
                if j != i:
                    row[j] = 0.0
        total = sum(row)
        row = [v / (total + 1e-8) for v in row]  # no self override
        weights.append(row)
    tokens = []
    for row in weights:
        tok = [0.0] * len(feat[0])
        for j in range(num):
            for c in range(len(tok)):
                tok[c] += row[j] * feat[j][c]
        tokens.append(tok)
    return tokens, anchors, weights, k1, picked_padded


def _inputs(seed, b, n, d=6, ds=4, ties=False):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(b, n, d, generator=g)
    sim = torch.randn(b, n, ds, generator=g)
    a = torch.rand(b, n, generator=g) + 0.01  # positive salience
    if ties:  # few distinct values: exercises the deterministic tie order
        a = torch.floor(a * 4) / 4 + 0.25
    return feat, sim, a


def _check_against_plain(h, w, b, n, s1, seed, ties):
    feat, sim, a = _inputs(seed, b, h * w, ties=ties)
    keep = keep_fraction((h, w), s1, n)
    tokens, idx = qwen_stage_one(feat, sim, a, (h, w), keep, per_region=n)
    assert tokens.shape == (b, keep, feat.shape[-1]) and tokens.dtype == feat.dtype
    assert idx.shape == (b, keep) and idx.dtype == torch.int64
    assert torch.equal(padded_anchors(a, (h, w), keep, n), idx)
    for bi in range(b):
        want_tokens, want_idx, _, k1, picked_padded = plain_qwen_stage_one(feat[bi], sim[bi], a[bi], h, w, s1, n)
        assert picked_padded == 0, "padding never picked"
        assert keep == k1 == len(want_idx)
        assert idx[bi].tolist() == want_idx
        torch.testing.assert_close(tokens[bi], torch.tensor(want_tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("s1", [0.35, 0.6, 0.85])
@pytest.mark.parametrize(
    "grid,b,n,seed,ties",
    [
        ((3, 5), 2, 1, 0, False),
        ((3, 5), 1, 3, 1, True),
        ((5, 5), 2, 2, 2, False),
        ((5, 5), 3, 4, 3, True),
        ((7, 4), 1, 2, 4, False),
        ((7, 4), 2, 3, 5, False),
        ((16, 16), 1, 2, 6, False),
        ((16, 16), 2, 3, 7, True),
        ((1, 3), 2, 1, 8, False),
        ((1, 3), 1, 4, 9, False),
        ((2, 2), 2, 1, 10, False),
        ((2, 2), 1, 4, 11, True),
        ((1, 1), 1, 1, 12, False),
        ((9, 7), 2, 4, 13, False),
    ],
)
def test_matches_plain_implementation(grid, b, n, seed, ties, s1):
    _check_against_plain(*grid, b, n, s1, seed, ties)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from([0.35, 0.6, 0.85]),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_matches_plain_random(h, w, b, n, s1, seed, ties):
    _check_against_plain(h, w, b, n, s1, seed, ties)


def _real_candidates_by_loop(h, w, n):
    hp, wp = padded_grid((h, w))
    total = 0
    for ry in range(hp // 2):
        for rx in range(wp // 2):
            real = 0
            for dy in range(2):
                for dx in range(2):
                    if 2 * ry + dy < h and 2 * rx + dx < w:
                        real += 1
            total += min(n, real)
    return total


@pytest.mark.parametrize("grid", [(1, 1), (1, 3), (2, 2), (3, 5), (5, 5), (7, 4), (16, 16), (9, 1)])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("s1", [0.35, 0.6, 0.85, 1.0])
def test_stage_one_keep(grid, n, s1):
    h, w = grid
    keep = keep_fraction(grid, s1, n)
    assert keep == min(math.ceil(h * w * s1), _real_candidates_by_loop(h, w, n))
    feat, sim, a = _inputs(0, 1, h * w)
    _, anchors, _, k1, picked_padded = plain_qwen_stage_one(feat[0], sim[0], a[0], h, w, s1, n)
    assert keep == k1 == len(anchors) and picked_padded == 0


def test_stage_one_keep_examples():
    assert keep_fraction((3, 3), 0.6, 1) == 4  # ceil(5.4) = 6 > 4 regions
    assert keep_fraction((16, 16), 0.35, 2) == 90  # ceil(89.6)
    assert keep_fraction((5, 5), 1.0, 4) == 25
    assert keep_fraction((5, 5), 1.0, 2) == 2 * 4 + 2 * 4 + 1  # full, edge, corner regions


def test_everything_kept_on_odd_grid():
    """s1 = 1 and n = 4: every real patch is an anchor, no padding."""
    feat, sim, a = _inputs(3, 2, 35)
    keep = keep_fraction((5, 7), 1.0, 4)
    assert keep == 35
    _, idx = qwen_stage_one(feat, sim, a, (5, 7), keep, per_region=4)
    assert torch.equal(idx, torch.arange(35).expand(2, -1))


def test_padding_never_picked_even_with_tiny_salience():
    """Real slots with scores far below any plausible padding value still beat the padding."""
    h, w = 3, 5
    a = torch.full((1, h * w), 1e-30)
    keep = keep_fraction((h, w), 1.0, 4)
    idx = padded_anchors(a, (h, w), keep, 4)
    assert idx.tolist() == [list(range(h * w))]


def test_reach():
    assert qwen_reach((16, 16)) == pytest.approx(0.8 * math.sqrt(15**2 + 15**2), rel=1e-15)
    assert qwen_reach((5, 5)) == pytest.approx(0.8 * math.sqrt(50), rel=1e-15)
    assert qwen_reach((1, 3)) == pytest.approx(0.8 * math.sqrt(1 + 9), rel=1e-15)
    assert padded_grid((5, 5)) == (6, 6) and padded_grid((7, 4)) == (8, 4) and padded_grid((1, 1)) == (2, 2)
    assert QWEN_REACH_FACTOR == 0.8 and QWEN_PERCENTILE == 0.1


def test_explicit_reach_matches_plain():
    """reach=None is qwen_reach; another reach changes the weights accordingly."""
    feat, sim, a = _inputs(4, 1, 25)
    keep = keep_fraction((5, 5), 0.6, 2)
    t_default, _ = qwen_stage_one(feat, sim, a, (5, 5), keep, per_region=2)
    t_explicit, _ = qwen_stage_one(feat, sim, a, (5, 5), keep, per_region=2, reach=qwen_reach((5, 5)))
    assert torch.equal(t_default, t_explicit)
    t_short, _ = qwen_stage_one(feat, sim, a, (5, 5), keep, per_region=2, reach=1.5)
    assert not torch.equal(t_default, t_short)


@pytest.mark.parametrize("grid,seed", [((5, 5), 0), ((7, 4), 1), ((16, 16), 2), ((3, 5), 3)])
def test_self_entry_is_the_only_difference_from_llava(grid, seed):
    """Qwen rows equal the LLaVA-style rows (same reach and percentile) except the collectors' self entry."""
    h, w = grid
    feat, sim, a = _inputs(seed, 2, h * w)
    keep = keep_fraction(grid, 0.6, 2)
    idx = padded_anchors(a, grid, keep, 2)
    reach = qwen_reach(grid)
    qwen = aggregation_weights(sim, a, idx, grid, percentile=0.1, reach=reach, self_override=False)
    llava = aggregation_weights(sim, a, idx, grid, percentile=0.1, reach=reach)
    is_self = torch.zeros_like(qwen, dtype=torch.bool).scatter_(2, idx[..., None], True)
    assert torch.equal(qwen[~is_self], llava[~is_self])
    scores = a.gather(1, idx)
    pillar = scores >= torch.quantile(scores, 0.1, dim=1, keepdim=True)
    self_q = qwen.gather(2, idx[..., None])[..., 0]
    assert bool((self_q[pillar] == 1.0).all()), "pillar rows: 1/(1+1e-8) rounds to 1 in float32"
    assert bool((self_q[~pillar] < 1.0).all()), "collectors keep their normalised self entry"
    torch.testing.assert_close(qwen.sum(-1), torch.ones_like(self_q), atol=1e-6, rtol=0)
    # and the collector self entry is the normalised raw self weight of the plain loop
    for bi in range(2):
        _, want_idx, want_w, _, _ = plain_qwen_stage_one(feat[bi], sim[bi], a[bi], h, w, 0.6, 2)
        assert idx[bi].tolist() == want_idx
        torch.testing.assert_close(qwen[bi], torch.tensor(want_w, dtype=torch.float32), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("grid,seed", [((5, 5), 0), ((16, 16), 1), ((7, 4), 2)])
def test_pillars_are_anchors_at_or_above_the_quantile(grid, seed):
    h, w = grid
    feat, sim, a = _inputs(seed, 2, h * w)
    keep = keep_fraction(grid, 0.85, 3)
    tokens, idx = qwen_stage_one(feat, sim, a, grid, keep, per_region=3)
    weights = aggregation_weights(sim, a, idx, grid, percentile=0.1, reach=qwen_reach(grid), self_override=False)
    others = weights.clone().scatter_(2, idx[..., None], 0.0)
    one_hot = (others == 0).all(-1)
    for bi in range(2):
        s = sorted(float(v) for v in a[bi, idx[bi]])
        pos = 0.1 * (keep - 1)
        lo = math.floor(pos)
        threshold = s[lo] + (pos - lo) * (s[math.ceil(pos)] - s[lo])
        for k, i in enumerate(idx[bi].tolist()):
            is_pillar = float(a[bi, i]) >= threshold
            assert bool(one_hot[bi, k]) == is_pillar
            if is_pillar:
                assert torch.equal(tokens[bi, k], feat[bi, i])


def test_ties_higher_score_then_lower_index():
    h, w = 3, 5  # padded 4x6: regions with top-left slots 0, 2, 4 (row 0) and 10, 12, 14 (row 2)
    a = torch.ones(1, h * w)
    assert padded_anchors(a, (h, w), 6, 1).tolist() == [[0, 2, 4, 10, 12, 14]]
    assert padded_anchors(a, (h, w), 3, 1).tolist() == [[0, 2, 4]]
    # a higher score wins inside its region and globally; equal scores fall back to the index
    a[0, 6] = 2.0  # (1, 1), region (0, 0)
    a[0, 13] = 2.0  # (2, 3), region (1, 1)
    a[0, 9] = 2.0  # (1, 4), region (0, 2)
    assert padded_anchors(a, (h, w), 6, 1).tolist() == [[2, 6, 9, 10, 13, 14]]
    assert padded_anchors(a, (h, w), 3, 1).tolist() == [[6, 9, 13]]
    assert padded_anchors(a, (h, w), 4, 1).tolist() == [[2, 6, 9, 13]]
    # two slots of one region tied at the top: the lower index first
    b = torch.ones(1, h * w)
    b[0, 1] = b[0, 5] = 3.0  # region (0, 0): slots 1 = (0, 1) and 5 = (1, 0)
    assert padded_anchors(b, (h, w), 1, 1).tolist() == [[1]]
    assert padded_anchors(b, (h, w), 2, 2).tolist() == [[1, 5]]


def test_batch_independence_and_dtype():
    feat, sim, a = _inputs(9, 3, 35)
    keep = keep_fraction((7, 5), 0.35, 2)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        tokens, idx = qwen_stage_one(feat.to(dtype), sim, a, (7, 5), keep, per_region=2)
        assert tokens.dtype == dtype and idx.dtype == torch.int64
    tokens, idx = qwen_stage_one(feat, sim, a, (7, 5), keep, per_region=2)
    for bi in range(3):
        t1, i1 = qwen_stage_one(feat[bi : bi + 1], sim[bi : bi + 1], a[bi : bi + 1], (7, 5), keep, per_region=2)
        assert torch.equal(i1[0], idx[bi])
        torch.testing.assert_close(t1[0], tokens[bi], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("grid,n,keep", [((3, 3), 4, 10), ((3, 3), 1, 5), ((5, 5), 2, 18), ((1, 3), 1, 3), ((5, 5), 1, 0)])
def test_refuses_keep_beyond_real_candidates(grid, n, keep):
    h, w = grid
    feat, sim, a = _inputs(0, 1, h * w)
    with pytest.raises(NuwaError, match="cannot keep"):
        qwen_stage_one(feat, sim, a, grid, keep, per_region=n)
    with pytest.raises(NuwaError, match="cannot keep"):
        padded_anchors(a, grid, keep, n)


def test_bad_arguments():
    feat, sim, a = _inputs(0, 1, 15)
    with pytest.raises(NuwaError, match="features have 15"):
        qwen_stage_one(feat, sim, a, (4, 4), 3, per_region=1)
    with pytest.raises(NuwaError, match="disagree"):
        qwen_stage_one(feat, sim[:, :14], a, (3, 5), 3, per_region=1)
    with pytest.raises(NuwaError, match="per_region"):
        qwen_stage_one(feat, sim, a, (3, 5), 3, per_region=5)
    with pytest.raises(NuwaError, match="at least 1"):
        padded_grid((0, 3))
    with pytest.raises(NuwaError, match="fraction"):
        keep_fraction((3, 5), 0.0, 1)
