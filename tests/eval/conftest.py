"""Evaluation data for the tests: the RefCOCO sample beside the clone, and tiny lmms-lab parquets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "refcoco-sample"


@pytest.fixture(scope="session")
def refcoco_json() -> Path:
    """The 10 VLM-R1-format RefCOCO annotations (with their 2 COCO images) that sit beside the clone."""
    if not (SAMPLE / "refcoco.json").is_file():
        pytest.skip(f"RefCOCO sample not found at {SAMPLE}")
    return SAMPLE / "refcoco.json"


def png_bytes(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def refcoco_rows(annotations_file: Path) -> list[dict]:
    """The sample's annotations in the lmms-lab RefCOCO schema: one row per object, its
    expressions in ``answer``, ``bbox`` as ``[x, y, w, h]`` pixels, the image embedded."""
    anns = json.loads(annotations_file.read_text())
    rows: dict[tuple, dict] = {}
    for a in anns:
        x1, y1, x2, y2 = a["solution"]
        key = (a["image"], tuple(a["solution"]))
        if key not in rows:
            data = (annotations_file.parent / a["image"]).read_bytes()
            rows[key] = {
                "question_id": f"q{len(rows)}",
                "image": {"bytes": data, "path": Path(a["image"]).name},
                "question": "Please carefully observe the area circled in the image and come up with a caption for the area.",
                "answer": [],
                "segmentation": [x1, y1, x2, y1, x2, y2, x1, y2],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
                "file_name": Path(a["image"]).name,
            }
        rows[key]["answer"].append(a["normal_caption"])
    return list(rows.values())
