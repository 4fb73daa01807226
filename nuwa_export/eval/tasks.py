"""The evaluation tasks and their prompts, in lmms-eval's conventions (the paper's harness).

A task knows how to ask (the prompt around a referring expression or a question), how many
tokens to allow and which metric is its headline. How a model family words a grounding question
and writes its box is the family's business (:func:`grounding_format` asks it): LLaVA-1.5 with
lmms-eval's prompt, Qwen2.5-VL with its own question and ``bbox_2d`` answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nuwa_export.errors import NuwaError

#: lmms-eval's suffix for short-answer VQA (GQA, POPE, TextVQA) with LLaVA.
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."

#: ``--box-convention`` values: how the 0–1 box in the answer relates to the image.
BOX_CONVENTIONS = {
    "lmms-eval": "the answer's box is read in 0-1 of the original image, as lmms-eval does and the paper reports",
    "padded": "the answer's box is read in 0-1 of the padded square LLaVA-1.5 saw and mapped back to the original image",
}


@dataclass(frozen=True)
class GroundingFormat:
    """How one model family is asked for a box, and how its answer is read.

    ``parse`` returns ``(x1, y1, x2, y2)`` in the family's own coordinates, or None when the
    answer has no box; ``unit(box, image_config)`` turns them into 0–1 of the square the model saw.
    """

    family: str
    prompt: Callable[[str], str]
    parse: Callable[[str], tuple[float, float, float, float] | None]
    unit: Callable


def grounding_format(family: str = "llava") -> GroundingFormat:
    """The family's grounding question (its benchmark prompt when it has one, e.g. lmms-eval's for
    LLaVA-1.5) and box format (:mod:`nuwa_export.models.families`)."""
    from nuwa_export.models.families import families

    known = families()
    if family not in known:
        raise NuwaError(f"no grounding prompt for model family '{family}' (known: {', '.join(sorted(known))})")
    g = known[family].grounding
    return GroundingFormat(family, g.eval_prompt, g.parse, g.unit)


@dataclass(frozen=True)
class Task:
    """``kind`` is ``grounding`` or ``vqa``; ``headline`` is the metric retention is quoted on."""

    name: str
    kind: str
    max_new_tokens: int
    headline: str
    description: str

    @property
    def grounding(self) -> bool:
        return self.kind == "grounding"

    def prompt(self, text: str, family: str = "llava") -> str:
        """The question put to the model for one sample (``text``: expression or question)."""
        if self.grounding:
            return grounding_format(family).prompt(text)
        if self.name == "textvqa":
            text = text.capitalize()  # as lmms-eval's textvqa_doc_to_text does
        return f"{text.strip() if self.name == 'pope' else text}{SHORT_ANSWER}"

    def parse_box(self, answer: str, family: str = "llava", cfg=None):
        """The answer's box in 0–1 of the square the model saw (``cfg``: its image config), or None."""
        fmt = grounding_format(family)
        box = fmt.parse(answer)
        return None if box is None else fmt.unit(box, cfg)


_REC = "referring expression -> box; mean IoU, Acc@0.1/0.3/0.5/0.7/0.9, centre accuracy"
TASKS: dict[str, Task] = {
    "refcoco": Task("refcoco", "grounding", 64, "acc@0.5", _REC),
    "refcoco+": Task("refcoco+", "grounding", 64, "acc@0.5", _REC),
    "refcocog": Task("refcocog", "grounding", 64, "acc@0.5", _REC),
    "gqa": Task("gqa", "vqa", 16, "accuracy", "exact match, case and punctuation ignored"),
    "pope": Task("pope", "vqa", 16, "accuracy", "yes/no: accuracy, precision, recall, F1, yes-ratio"),
    "textvqa": Task("textvqa", "vqa", 16, "accuracy", "EvalAI-normalised VQA accuracy over 10 answers"),
}


def get_task(name: str) -> Task:
    task = TASKS.get(name.lower())
    if task is None:
        raise NuwaError(f"unknown task '{name}' (choose from {', '.join(TASKS)})")
    return task
