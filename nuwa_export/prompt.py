"""Prompts split around the image: the token ids before and after it, and the checks every family's
template shares. A family words its own template (LLaVA-1.5's fixed string); a tokenizer's own
chat template is used by :func:`build_chat_prompt` (Qwen2.5-VL's)."""

from __future__ import annotations

from dataclasses import dataclass

from nuwa_export.errors import NuwaError


@dataclass(frozen=True)
class Prompt:
    """Token ids around the image: the sequence is ``before + [vision tokens] + after``."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    image_token_id: int

    @property
    def input_ids(self) -> list[int]:
        """The prompt's ids with one image placeholder where the image goes."""
        return [*self.before, self.image_token_id, *self.after]


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid UTF-8: bytes that were not UTF-8 on the command line reach
    Python as lone surrogates, which the tokenizer cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NuwaError(f"{what} is not valid UTF-8 text (character {e.start + 1} is an undecodable byte)") from None


def check_question(tokenizer, text: str, image_token_id: int, image_token: str) -> None:
    """Refuse an empty or non-UTF-8 question, one with the image token in it, and a tokenizer
    that does not map ``image_token`` to the model's image token id."""
    if not text.strip():
        raise NuwaError("--prompt is empty")
    check_text(text, "the prompt")
    if image_token in text:
        raise NuwaError(f"--prompt must not contain {image_token}; the image is placed by the chat template")
    if tokenizer.convert_tokens_to_ids(image_token) != image_token_id:
        raise NuwaError(
            f"no image placeholder possible: the tokenizer does not map {image_token} to the model's "
            f"image token id {image_token_id}"
        )


def split_at_image(ids: list[int], image_token_id: int, what: str) -> Prompt:
    """``ids`` split at their one image token (``what`` names them in the error)."""
    slots = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(slots) != 1:
        raise NuwaError(f"no image placeholder possible: {what} has {len(slots)} image tokens, expected 1")
    at = slots[0]
    return Prompt(tuple(ids[:at]), tuple(ids[at + 1 :]), image_token_id)


def build_chat_prompt(tokenizer, text: str, image_token_id: int, image_token: str) -> Prompt:
    """Tokenize ``text`` after one image in the tokenizer's own chat template (a user turn and
    the generation prompt; Qwen2.5-VL's) and find the image slot (``image_token``, once)."""
    check_question(tokenizer, text, image_token_id, image_token)
    if not getattr(tokenizer, "chat_template", None):
        raise NuwaError("the checkpoint's tokenizer has no chat template (tokenizer_config.json or chat_template.jinja)")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return split_at_image(list(tokenizer(rendered, add_special_tokens=False).input_ids), image_token_id, "the chat template")


def check_context(prompt: Prompt, span: int, max_new_tokens: int, limit: int) -> None:
    """Positions run to ``b + span + c + max_new_tokens`` whatever is pruned (``span``: the
    positions the image takes, ``ImagePlan.span``): refuse past ``limit``."""
    need = len(prompt.before) + span + len(prompt.after) + max_new_tokens
    if need > limit:
        raise NuwaError(
            f"prompt ({len(prompt.before) + len(prompt.after)} tokens + {span} image positions) plus "
            f"{max_new_tokens} new tokens needs {need} positions; the model's context is {limit}"
        )
