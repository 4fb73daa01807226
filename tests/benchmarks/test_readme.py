"""benchmarks/README.md is what the committed results render to, every section from its JSON
(a script change that breaks a section's rendering would otherwise only show as a one-line note)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def test_every_committed_result_renders_and_matches_the_readme():
    sys.path.insert(0, str(BENCH))
    try:
        import common

        text = common.render_readme()
    finally:
        sys.path.remove(str(BENCH))
    assert "was written by an older version of the script" not in text
    assert text == (BENCH / "README.md").read_text()


def test_decode_scaling_reports_its_targets_from_the_json():
    r = json.loads((BENCH / "results" / "decode_scaling.json").read_text())
    readme = (BENCH / "README.md").read_text()
    m = r["measured"]
    assert f"| batch-8 decode throughput / batch-1 | {m['batch8_over_batch1']['in_place']:.2f}×" in readme
    assert f"| decode ms/token at KV 2048 / at KV 128 | {m['kv2048_over_kv128']['in_place']:.2f}×" in readme
    assert f"| decode, % of its memory roofline, at every KV length to 2048 | {100 * m['memory_roofline_fraction']['in_place']:.0f} % at worst" in readme
    for n, v in r["kv_lengths"].items():  # the roofline: every weight and the whole cache, at the measured bandwidth
        assert v["roofline"]["kv_bytes"] == int(n) * r["kv_bytes_per_entry"]
        assert abs(v["roofline"]["ms"] - (v["roofline"]["weight_bytes"] + v["roofline"]["kv_bytes"]) / (r["limits"]["dram"]["gb_per_s"] * 1e6)) < 1e-6
    assert set(r["kv_lengths"]) == {"128", "256", "512", "1024", "2048"} and set(r["batches"]) == {"1", "2", "4", "8"}
