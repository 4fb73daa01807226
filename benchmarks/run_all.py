"""Regenerate every number in ``benchmarks/README.md``: run each benchmark, then render the README
from all ``results/*.json``.

    .venv/bin/python benchmarks/run_all.py                          # everything (~25 min on 2 CPU cores, ~17 of them scale; ~45 GB of disk)
    .venv/bin/python benchmarks/run_all.py --reuse vision_overhead  # keep that benchmark's JSON
    .venv/bin/python benchmarks/run_all.py --render-only            # only re-render the README
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

#: Script and arguments per benchmark, in the order they run. The arguments are the scripts'
#: defaults, written out so that the commands recorded in the README are the ones that ran.
SCRIPTS = {
    "pruning_pays": ["--runs", "8", "--warmup", "2"],
    "decode_scaling": ["--runs", "5", "--warmup", "1"],
    "export_vs_eager": ["--runs", "20", "--warmup", "3"],
    "vision_overhead": ["--runs", "5", "--warmup", "1"],
    "quantize": ["--runs", "5", "--warmup", "1"],
    "scale": ["--sizes", "7b"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="append", default=[], choices=sorted(SCRIPTS), metavar="NAME",
                    help=f"keep results/NAME.json instead of re-running NAME (repeatable; one of {', '.join(SCRIPTS)})")
    ap.add_argument("--render-only", action="store_true", help="only render README.md from results/*.json")
    args = ap.parse_args(argv)
    if not args.render_only:
        for name in args.reuse:
            if not (common.RESULTS / f"{name}.json").is_file():
                ap.error(f"--reuse {name}: results/{name}.json does not exist")
        record = {"machine": common.machine(), "versions": common.versions(), "reused": args.reuse, "scripts": {}}
        start = time.perf_counter()
        for name, script_args in SCRIPTS.items():
            if name in args.reuse:
                prev = json.loads((common.RESULTS / f"{name}.json").read_text())
                record["scripts"][name] = {"wall_s": prev.get("wall_s", 0.0), "reused": True}
                print(f"== {name}: reusing results/{name}.json", flush=True)
                continue
            print(f"== {name}", flush=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, str(common.HERE / f"{name}.py"), *script_args], check=True, cwd=common.HERE.parent)
            record["scripts"][name] = {"wall_s": round(time.perf_counter() - t, 1), "reused": False}
        record["wall_s"] = round(time.perf_counter() - start, 1)
        common.write_results("run_all", record)
    common.write_readme()
    print(f"wrote {common.README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
