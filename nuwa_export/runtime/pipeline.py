"""Answer questions from an export directory: preprocess → vision → prefix → stage two → suffix → decode.

Two KV groups: the prefix graph's layers keep ``b + K1 + c`` prompt entries, the suffix's
``b + K2 + c``; every decode step runs both graphs with their own past lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nuwa_export.errors import NuwaError
from nuwa_export.export import manifest as mf
from nuwa_export.generation import Clock, GenerationResult, decode_loop
from nuwa_export.image import ImageConfig, load_image, preprocess
from nuwa_export.prompt import build_prompt, check_context
from nuwa_export.pruning import Budgets, decode_position, position_ids, stage_two
from nuwa_export.runtime.backend import Backend, make_backend
from nuwa_export.sampling import SamplingConfig

EMBEDDINGS_FILE = "embeddings.safetensors"
TOKENIZER_DIR = "tokenizer"


def budgets_of(m: mf.Manifest) -> Budgets:
    b = m.budgets
    return Budgets(b.keep, b.stage_one_keep, b.stage_two_keep, b.stage_two_layer, m.num_patches, b.num_layers, b.prune)


def image_config_of(m: mf.Manifest) -> ImageConfig:
    p = dict(m.preprocessing)
    return ImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})


class Pipeline:
    """An export directory and one backend; :meth:`generate` answers one question."""

    def __init__(self, directory: str | Path, backend: str | Backend = "ort", device: str = "auto") -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        from transformers import AutoTokenizer

        self.directory = Path(directory)
        self.manifest = mf.read(self.directory)
        self.budgets = budgets_of(self.manifest)
        self.image_config = image_config_of(self.manifest)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.directory / TOKENIZER_DIR)
        except Exception as e:  # a tokenizer/ that passed its sha256 yet does not load
            why = " ".join(str(e).split())[:300] or type(e).__name__
            raise NuwaError(f"cannot load the tokenizer in {self.directory / TOKENIZER_DIR} ({why}); re-run nuwa-export") from None
        try:
            self.embeddings = load_file(self.directory / EMBEDDINGS_FILE)["embed_tokens"]
        except (SafetensorError, OSError, KeyError) as e:  # passed its sha256 and header check, yet broken
            why = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise NuwaError(f"cannot load {self.directory / EMBEDDINGS_FILE} ({why}); re-run nuwa-export") from None
        self.backend = backend if isinstance(backend, Backend) else make_backend(backend, self.directory, self.manifest, device)

    def close(self) -> None:
        self.backend.close()

    def _empty_past(self, layers: range) -> list[np.ndarray]:
        llm = self.manifest.llm
        shape = (1, llm.num_kv_heads, 0, llm.head_dim)
        return [np.zeros(shape, self.embeddings.dtype) for _ in layers for _ in range(2)]

    def generate(
        self,
        image,
        prompt: str,
        sampling: SamplingConfig | None = None,
        on_token: Callable[[int], None] | None = None,
        trace: dict | None = None,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (path or PIL image). ``trace`` collects intermediates."""
        sampling = sampling or SamplingConfig()
        llm, b = self.manifest.llm, self.budgets
        prompt_ids = build_prompt(self.tokenizer, prompt, llm.image_token_id)
        nb, nc = len(prompt_ids.before), len(prompt_ids.after)
        if max(prompt_ids.before + prompt_ids.after, default=0) >= llm.vocab_size:
            raise NuwaError(f"the tokenizer in {self.directory / TOKENIZER_DIR} makes token ids beyond llm.vocab_size {llm.vocab_size}; re-run nuwa-export")
        check_context(prompt_ids, b.num_patches, sampling.max_new_tokens, llm.max_positions)
        clock = Clock()
        if not hasattr(image, "size"):
            image = load_image(image)
        pixels = preprocess(image, self.image_config)[None]
        clock.lap("preprocess")
        tokens, indices = self.backend.vision(pixels)
        clock.lap("vision")
        embed = self.embeddings
        hidden = np.concatenate([embed[list(prompt_ids.before)][None], tokens.astype(embed.dtype), embed[list(prompt_ids.after)][None]], axis=1)
        pos = position_ids(nb, torch.from_numpy(indices), nc, b.num_patches).numpy()
        layer, n = b.layer, b.num_layers
        split, past1, scores = self.backend.prefix(hidden, pos, nb, self._empty_past(range(layer)))
        clock.lap("prefix")
        kept = None
        hidden, pos2 = split, pos
        if b.prune:
            kept = stage_two(torch.from_numpy(np.ascontiguousarray(scores)), b.k2).numpy()
            rows = np.concatenate([np.arange(nb), nb + kept[0], nb + tokens.shape[1] + np.arange(nc)])
            hidden, pos2 = split[:, rows], pos[:, rows]
        clock.lap("stage_two")
        logits, past2 = self.backend.suffix(np.ascontiguousarray(hidden), np.ascontiguousarray(pos2), self._empty_past(range(layer, n)))
        clock.lap("suffix")
        clock.first_token()
        if trace is not None:
            trace.update(vision_tokens=tokens, patch_indices=indices, split_hidden=split, stage_two_scores=scores, stage_two=kept, first_logits=logits)
        next_pos = decode_position(nb, nc, b.num_patches, 0)
        kv = {"prefix": past1, "suffix": past2}

        def step(token: int, i: int):
            e = embed[[token]][None]
            p = np.array([[next_pos + i]], np.int64)
            h, kv["prefix"], _ = self.backend.prefix(e, p, nb, kv["prefix"])
            out, kv["suffix"] = self.backend.suffix(h, p, kv["suffix"])
            return out

        generated = decode_loop(logits, step, sampling, set(llm.eos_token_ids), on_token)
        clock.finish(len(generated))
        s1 = indices[0].tolist()
        return GenerationResult(
            prompt=prompt_ids,
            generated_ids=generated,
            text=self.tokenizer.decode(generated, skip_special_tokens=True).strip(),
            stage_one_indices=s1,
            stage_two_indices=None if kept is None else [s1[i] for i in kept[0].tolist()],
            budgets=b,
            timings_ms=clock.ms,
            kv_cache_bytes=int(sum(a.nbytes for a in kv["prefix"] + kv["suffix"])),
            backend=self.backend.name,
        )
