"""Scoring answers against the truth, per sample and over a run, in lmms-eval's conventions.

Grounding: the first ``[a, b, c, d]`` in the answer is the box (none → ``[0, 0, 0, 0]``), the
truth is normalised by the *original* width and height, and a sample scores its IoU, a hit at
each threshold (IoU ≥ t) and a centre hit (the predicted box's centre inside the true box).
Under ``--box-convention padded`` the answer box is read in the padded square and mapped back
(clipped to the image) before it is normalised by the original size; under ``lmms-eval`` it is
taken as it is, as lmms-eval does, unclipped.
"""

from __future__ import annotations

from nuwa_export import boxes
from nuwa_export.eval import normalize
from nuwa_export.eval.tasks import BOX_CONVENTIONS, Task
from nuwa_export.image import ImageConfig

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
NO_BOX = (0.0, 0.0, 0.0, 0.0)
#: Only the padding geometry of an image config matters to a box; scoring without a model uses this.
PADDED = ImageConfig(size=336)

Box = tuple[float, float, float, float]


def answer_box(task: Task, answer: str, size: tuple[int, int], convention: str, cfg: ImageConfig = PADDED, family: str = "llava") -> Box | None:
    """The answer's box in 0–1 of the original image, or None when the answer has no box
    (``family``: how the answer writes its box, :func:`~nuwa_export.eval.tasks.grounding_format`)."""
    if convention not in BOX_CONVENTIONS:
        raise ValueError(f"unknown box convention {convention!r}")
    box = task.parse_box(answer, family, cfg)
    if box is None:
        return None
    if convention == "padded":
        w, h = size
        x1, y1, x2, y2 = boxes.to_pixels(box, w, h, cfg)
        return (x1 / w, y1 / h, x2 / w, y2 / h)
    return box


def truth_box(pixels: Box, size: tuple[int, int]) -> Box:
    """``[x1, y1, x2, y2]`` pixels → 0–1 of the original ``width × height``."""
    w, h = size
    return (pixels[0] / w, pixels[1] / h, pixels[2] / w, pixels[3] / h)


def centre_hit(truth: Box, pred: Box) -> bool:
    cx, cy = (pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2
    return truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3]


def grounding_sample(pred: Box | None, truth: Box) -> dict:
    box = pred if pred is not None else NO_BOX
    return {"box": list(box), "parsed": pred is not None, "iou": boxes.iou(box, truth), "centre": centre_hit(truth, box)}


def vqa_sample(task: Task, answer: str, truth) -> dict:
    """``truth``: the answer (GQA, POPE) or the list of human answers (TextVQA)."""
    if task.name == "gqa":
        return {"score": float(normalize.simple(answer) == normalize.simple(truth))}
    if task.name == "pope":
        pred = answer.lower().strip()
        return {"score": float(pred == truth), "pred": pred, "truth": truth}
    if task.name == "textvqa":
        pred = normalize.evalai(answer)
        gts = [normalize.evalai(a) for a in truth]
        subsets = [[g for j, g in enumerate(gts) if j != i] for i in range(len(gts))]
        return {"score": sum(min(1.0, sum(g == pred for g in s) / 3) for s in subsets) / len(subsets)}
    raise ValueError(f"not a VQA task: {task.name}")


def aggregate(task: Task, rows: list[dict]) -> dict:
    """Metrics over per-sample rows (0 samples gives ``n: 0`` and no averages)."""
    n = len(rows)
    if n == 0:
        return {"n": 0}
    if task.grounding:
        out = {"n": n, "mean_iou": sum(r["iou"] for r in rows) / n}
        out.update({f"acc@{t}": sum(r["iou"] >= t for r in rows) / n for t in THRESHOLDS})
        out["centre_acc"] = sum(r["centre"] for r in rows) / n
        out["parsed"] = sum(r["parsed"] for r in rows) / n
        return out
    out = {"n": n, "accuracy": sum(r["score"] for r in rows) / n}
    if task.name == "pope":
        out.update(_pope(rows))
    return out


def _pope(rows: list[dict]) -> dict:
    """Precision and recall of "yes" as lmms-eval counts them; yes-ratio of the answers (POPE's)."""
    tp = sum(r["truth"] == "yes" and r["pred"] == "yes" for r in rows)
    fp = sum(r["truth"] == "no" and r["pred"] == "yes" for r in rows)
    fn = sum(r["truth"] == "yes" and r["pred"] == "no" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "yes_ratio": sum(r["pred"] == "yes" for r in rows) / len(rows)}


def score(data, answers: dict[int, str], convention: str = "lmms-eval", cfg: ImageConfig = PADDED, family: str = "llava") -> tuple[dict, dict[int, dict]]:
    """Score ``answers`` (sample index → text) on ``data``: (metrics, per-sample rows by index)."""
    task = data.task
    rows: dict[int, dict] = {}
    for i in sorted(answers):
        sample = data.samples[i]
        if task.grounding:
            size = data.size(i)
            rows[i] = grounding_sample(answer_box(task, answers[i], size, convention, cfg, family), truth_box(sample.truth, size))
        else:
            rows[i] = vqa_sample(task, answers[i], sample.truth)
    return aggregate(task, list(rows.values())), rows


def headline_keys(task: Task) -> list[str]:
    return ["acc@0.5", "mean_iou"] if task.grounding else ["accuracy"]


def retention(task: Task, pruned: dict, full: dict) -> dict:
    """The paper's measure: a pruned metric as a percentage of the full model's, on the same samples."""
    out = {}
    for key in headline_keys(task):
        p, f = pruned.get(key), full.get(key)
        pct = 100.0 * p / f if p is not None and f else None
        out[key] = {"pruned": p, "full": f, "retention_pct": pct}
        if pct is None:
            out[key]["why"] = "the full model scores 0, so retention is undefined" if f == 0 else "no samples"
    return out
