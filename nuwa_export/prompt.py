"""Prompts split around the image: LLaVA-1.5's ``USER: <image>\\n{prompt} ASSISTANT:``, and a
tokenizer's own chat template (Qwen2.5-VL)."""

from __future__ import annotations

from dataclasses import dataclass

from nuwa_export.errors import NuwaError

IMAGE_TOKEN = "<image>"
TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


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


def build_prompt(tokenizer, text: str, image_token_id: int) -> Prompt:
    """Tokenize ``text`` in the LLaVA-1.5 template (BOS included) and find the image slot."""
    _check_question(tokenizer, text, image_token_id, IMAGE_TOKEN)
    return _split(list(tokenizer(TEMPLATE.format(prompt=text)).input_ids), image_token_id, "the tokenized prompt")


def _check_question(tokenizer, text: str, image_token_id: int, image_token: str) -> None:
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


def _split(ids: list[int], image_token_id: int, what: str) -> Prompt:
    slots = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(slots) != 1:
        raise NuwaError(f"no image placeholder possible: {what} has {len(slots)} image tokens, expected 1")
    at = slots[0]
    return Prompt(tuple(ids[:at]), tuple(ids[at + 1 :]), image_token_id)


def build_chat_prompt(tokenizer, text: str, image_token_id: int, image_token: str) -> Prompt:
    """Tokenize ``text`` after one image in the tokenizer's own chat template (a user turn and
    the generation prompt; Qwen2.5-VL's) and find the image slot (``image_token``, once)."""
    _check_question(tokenizer, text, image_token_id, image_token)
    if not getattr(tokenizer, "chat_template", None):
        raise NuwaError("the checkpoint's tokenizer has no chat template (tokenizer_config.json or chat_template.jinja)")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return _split(list(tokenizer(rendered, add_special_tokens=False).input_ids), image_token_id, "the chat template")


def check_context(prompt: Prompt, num_patches: int, max_new_tokens: int, limit: int) -> None:
    """Positions run to ``b + num_patches + c + max_new_tokens`` whatever is pruned (``num_patches``:
    the positions the image spans, ``max(H, W)`` for M-RoPE): refuse past ``limit``."""
    need = len(prompt.before) + num_patches + len(prompt.after) + max_new_tokens
    if need > limit:
        raise NuwaError(
            f"prompt ({len(prompt.before) + len(prompt.after)} tokens + {num_patches} image positions) plus "
            f"{max_new_tokens} new tokens needs {need} positions; the model's context is {limit}"
        )
