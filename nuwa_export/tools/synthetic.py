"""``python -m nuwa_export.tools.synthetic CKPT_DIR --sizes 7b``: a full-size random-weight LLaVA
checkpoint, written shard by shard (:mod:`nuwa_export.models.families.llava.synthetic`); prints one
JSON line with the wall time and the peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from nuwa_export.models.families.llava.synthetic import PRESETS, build_sharded
from nuwa_export.precision import FLOATS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a full-size random-weight LLaVA checkpoint, shard by shard.")
    ap.add_argument("path", type=Path)
    ap.add_argument("--sizes", choices=sorted(PRESETS), default="7b")
    ap.add_argument("--dtype", choices=sorted(FLOATS), default="float16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gib", type=float, default=2.0)
    args = ap.parse_args(argv)
    sizes, vocab = PRESETS[args.sizes]
    start = time.perf_counter()
    build_sharded(args.path, seed=args.seed, dtype=args.dtype, llm_vocab_size=vocab, shard_bytes=int(args.shard_gib * 2**30), **sizes)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"path": str(args.path), "wall_s": round(wall, 1), "peak_rss_bytes": peak}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
