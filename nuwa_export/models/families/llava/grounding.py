"""How LLaVA-1.5 is asked for a box, and how it answers: ``[x1, y1, x2, y2]`` in 0–1 of the padded
square it saw (docs/algorithm.md §9)."""

from __future__ import annotations

from nuwa_export import boxes
from nuwa_export.models.families.base import Grounding

#: The RefCOCO ``bbox_rec`` question LLaVA-1.5 was trained on.
QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: {phrase}."
#: lmms-eval's RefCOCO ``bbox_rec`` prompt (what the paper's LLaVA numbers were measured with);
#: the referring expression follows it verbatim.
BBOX_REC_PROMPT = (
    "Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, "
    "bottom-right y). All values are floating point numbers bounded between 0 and 1. Please provide "
    "the bounding box coordinate of the region this sentence describes: {expression}"
)


class LlavaGrounding(Grounding):
    def question(self, phrase: str) -> str:
        return QUESTION.format(phrase=phrase.strip().rstrip("."))

    def eval_prompt(self, expression: str) -> str:
        return BBOX_REC_PROMPT.format(expression=expression)

    def parse(self, answer: str) -> boxes.Box | None:
        """The first ``[x1, y1, x2, y2]`` (0–1 of the padded square), or None."""
        return boxes.parse_box(answer)
