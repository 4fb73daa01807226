"""Scorers on hand-made answers with known IoUs and matches, in lmms-eval's conventions."""

from __future__ import annotations

import pytest

from nuwa_export import boxes
from nuwa_export.eval import metrics, normalize
from nuwa_export.eval.tasks import get_task
from nuwa_export.image import ImageConfig
from nuwa_export.models.families.llava.grounding import BBOX_REC_PROMPT

REFCOCO = get_task("refcoco")
SIZE = (640, 480)  # padded to 640x640 with 80-pixel bands above and below
TRUTH = metrics.truth_box((64, 48, 320, 240), SIZE)  # (0.1, 0.1, 0.5, 0.5) of the original image


def _score(answer: str, convention: str = "lmms-eval") -> dict:
    return metrics.grounding_sample(metrics.answer_box(REFCOCO, answer, SIZE, convention), TRUTH)


def test_truth_is_normalised_by_the_original_size():
    assert TRUTH == pytest.approx((0.1, 0.1, 0.5, 0.5))


def test_exact_box():
    r = _score("[0.1, 0.1, 0.5, 0.5]")
    assert r["iou"] == pytest.approx(1.0) and r["centre"] and r["parsed"]


def test_partial_overlap_has_the_known_iou():
    r = _score("The region is [0.3, 0.3, 0.7, 0.7].")
    assert r["iou"] == pytest.approx(0.04 / 0.28)  # 0.2² over 0.16 + 0.16 - 0.04
    assert r["centre"]  # (0.5, 0.5) lies on the true box's corner: inclusive, as lmms-eval


def test_first_box_wins():
    assert _score("[0.3, 0.3, 0.7, 0.7] or rather [0.1, 0.1, 0.5, 0.5]")["iou"] == pytest.approx(0.04 / 0.28)


@pytest.mark.parametrize("answer", ["no idea", "[0.1, 0.2, 0.3]", "", "box: 0.1, 0.1, 0.5, 0.5"])
def test_unparsable_answer_scores_the_empty_box(answer):
    r = _score(answer)
    assert not r["parsed"] and r["box"] == [0.0, 0.0, 0.0, 0.0]
    assert r["iou"] == 0.0 and not r["centre"]


def test_box_outside_the_image_lmms_eval_is_not_clipped():
    r = _score("[0.3, 0.3, 1.5, 1.5]")
    assert r["iou"] == pytest.approx(0.04 / (0.16 + 1.44 - 0.04))


def test_box_outside_the_image_padded_is_clipped_to_the_image():
    r = _score("[0.3, 0.3, 1.5, 1.5]", "padded")
    # x: 0.3·640 = 192 px; y: 0.3·640 - 80 = 112 px; far corner clipped to (640, 480)
    assert r["box"] == pytest.approx([0.3, 112 / 480, 1.0, 1.0])
    inter = (0.5 - 0.3) * (0.5 - 112 / 480)
    assert r["iou"] == pytest.approx(inter / (0.16 + 0.7 * (1 - 112 / 480) - inter))


def test_the_two_conventions_differ_on_a_non_square_image():
    """A box in the padded square is exact under ``padded`` and off under ``lmms-eval``."""
    padded = boxes.to_padded((64, 48, 320, 240), *SIZE, ImageConfig(size=336))
    answer = "[" + ", ".join(f"{v:.6f}" for v in padded) + "]"
    assert _score(answer, "padded")["iou"] == pytest.approx(1.0, abs=1e-5)
    assert padded == pytest.approx((0.1, 0.2, 0.5, 0.5))  # y: (48 + 80) / 640 and (240 + 80) / 640
    # read as original-image coordinates, the box loses its top quarter: IoU 0.4·0.3 / 0.4·0.4
    assert _score(answer, "lmms-eval")["iou"] == pytest.approx(0.75)


def test_aggregate_grounding():
    rows = [_score(a) for a in ("[0.1, 0.1, 0.5, 0.5]", "[0.3, 0.3, 0.7, 0.7]", "nothing", "[0.6, 0.6, 0.9, 0.9]")]
    m = metrics.aggregate(REFCOCO, rows)
    assert m["n"] == 4 and m["mean_iou"] == pytest.approx((1 + 1 / 7) / 4)
    assert m["acc@0.1"] == 0.5 and m["acc@0.3"] == 0.25 and m["acc@0.5"] == 0.25 and m["acc@0.9"] == 0.25
    assert m["centre_acc"] == 0.5 and m["parsed"] == 0.75


def test_grounding_prompt_is_lmms_eval_bbox_rec():
    p = REFCOCO.prompt("man on right")
    assert p == BBOX_REC_PROMPT.format(expression="man on right")
    assert p.startswith("Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, bottom-right y).")
    assert p.endswith("Please provide the bounding box coordinate of the region this sentence describes: man on right")


def test_vqa_prompts():
    suffix = "\nAnswer the question using a single word or phrase."
    assert get_task("gqa").prompt("Is the cup red?") == "Is the cup red?" + suffix
    assert get_task("pope").prompt("  Is there a dog in the image? ") == "Is there a dog in the image?" + suffix
    assert get_task("textvqa").prompt("what brand is THIS?") == "What brand is this?" + suffix  # str.capitalize, as lmms-eval


def test_gqa_exact_match_ignores_case_and_punctuation():
    gqa = get_task("gqa")
    assert metrics.vqa_sample(gqa, "Yes.", "yes")["score"] == 1.0
    assert metrics.vqa_sample(gqa, "Table!", "table")["score"] == 1.0
    assert metrics.vqa_sample(gqa, "the table", "table")["score"] == 0.0  # articles count in GQA
    assert metrics.vqa_sample(gqa, "", "table")["score"] == 0.0


def test_pope_metrics():
    pope = get_task("pope")
    truth = ["yes", "yes", "no", "no", "yes"]
    preds = ["Yes", "no", "yes", "No", "yes."]  # "yes." is neither yes nor no: wrong, no count
    m = metrics.aggregate(pope, [metrics.vqa_sample(pope, p, t) for p, t in zip(preds, truth)])
    assert m["accuracy"] == pytest.approx(0.4)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    assert m["yes_ratio"] == pytest.approx(0.4)


def test_textvqa_leave_one_out():
    tv = get_task("textvqa")
    answers = ["two", "two", "2"] + ["stop"] * 7
    # "2" matches three human answers (EvalAI maps "two" to "2"): 3 subsets see 2 matches, 7 see 3
    assert metrics.vqa_sample(tv, "2", answers)["score"] == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert metrics.vqa_sample(tv, "Stop.", answers)["score"] == pytest.approx(1.0)
    assert metrics.vqa_sample(tv, "A stop sign", answers)["score"] == 0.0
    assert metrics.vqa_sample(tv, "stop", ["stop", "go"] + ["go"] * 8)["score"] == pytest.approx(1 / 3 * 9 / 10)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Dont", "don't"),
        ("hed've", "he'd've"),
        ("Ten apples", "10 apples"),
        ("none", "0"),
        ("The Cat", "cat"),
        ("3,000", "3000"),
        ("hello-world", "hello world"),
        ("well - maybe", "well maybe"),
        ("2.5 kg.", "2.5 kg"),
        ("cat's toy", "cat 's toy"),
        ("yes!", "yes"),
    ],
)
def test_evalai_normalisation(raw, normalised):
    assert normalize.evalai(raw) == normalised


def test_retention():
    ret = metrics.retention(REFCOCO, {"acc@0.5": 0.3, "mean_iou": 0.2}, {"acc@0.5": 0.6, "mean_iou": 0.5})
    assert ret["acc@0.5"]["retention_pct"] == pytest.approx(50.0) and ret["mean_iou"]["retention_pct"] == pytest.approx(40.0)
    zero = metrics.retention(get_task("gqa"), {"accuracy": 0.0}, {"accuracy": 0.0})
    assert zero["accuracy"]["retention_pct"] is None and "full model scores 0" in zero["accuracy"]["why"]


def test_unknown_task():
    from nuwa_export.errors import NuwaError

    with pytest.raises(NuwaError, match="unknown task 'vqav2'.*refcoco"):
        get_task("vqav2")
