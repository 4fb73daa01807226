#!/usr/bin/env bash
# Sets up .venv with nuwa-export and its test tools. Idempotent: re-running only checks.
# torch is installed first, pinned, so nothing later pulls a multi-GB CUDA build on a CPU box
# (on a GPU machine `pip install torch==2.13.0` from PyPI gives the CUDA build you want).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: error: Python >= 3.11 needed" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
.venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" install torch==2.13.0 2> >(grep -v "is ignored" >&2)
"${pip[@]}" install -e ".[test]" 2> >(grep -v "is ignored" >&2)
