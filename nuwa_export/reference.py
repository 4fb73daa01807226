"""PyTorch generation with Nüwa pruning: the ground truth every exported backend is held to.

Stage one after the vision tower, spatial positions, stage two before layer ``L``, and decoding
with two KV groups (layers ``[0, L)`` hold ``b + K1 + c`` prompt entries, layers ``[L, N)`` hold
``b + K2 + c``). The model instance is only read: its modules are called in order, nothing on it
or on its classes is replaced. With pruning off the result equals HF ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nuwa_export.errors import NuwaError
from nuwa_export.generation import Clock, GenerationResult, decode_loop
from nuwa_export.image import load_image, preprocess
from nuwa_export.models.llava import KVCache
from nuwa_export.models.loader import LoadedModel
from nuwa_export.prompt import Prompt, build_prompt, check_context
from nuwa_export.pruning import Budgets, decode_position, pillar_mask, position_ids, stage_one, stage_two
from nuwa_export.sampling import SamplingConfig


@dataclass(frozen=True)
class StageOneOptions:
    """Stage-one knobs (defaults: docs/algorithm.md §6)."""

    per_region: int | None = None
    distance: float = 280.0
    percentile: float = 0.55


@dataclass
class VisionOutput:
    """``tokens [B, K1, D_llm]`` projected; ``indices [B, K1]`` int64 ascending patch indices.

    ``pillars [B, K1]`` bool marks the stage-one anchors that are pillars (anchor score at or
    above the ``percentile`` quantile, docs/algorithm.md §2.4); None when pruning is off.
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    pillars: torch.Tensor | None = None


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, V] float32, last position
    cache: KVCache
    stage_two: torch.Tensor | None  # [B, K2] positions within the K1 vision tokens, or None
    next_position: int
    split_hidden: torch.Tensor  # [B, T, D] hidden states after layer L-1, every row
    stage_two_scores: torch.Tensor  # [B, K1] float32 (the last row at layer L-1)


class Reference:
    """Nüwa generation on a loaded LLaVA model."""

    def __init__(self, loaded: LoadedModel, budgets: Budgets, stage_one_options: StageOneOptions | None = None):
        self.loaded = loaded
        self.parts = loaded.parts
        self.budgets = budgets
        self.options = stage_one_options or StageOneOptions()
        if budgets.num_patches != self.parts.num_patches or budgets.num_layers != self.parts.num_layers:
            raise NuwaError("budgets were resolved for another model")

    # ---- stages -----------------------------------------------------------------------------
    def pixel_values(self, image) -> torch.Tensor:
        """A path or PIL image → ``[1, 3, S, S]`` in the vision tower's dtype, on the model's device."""
        if not hasattr(image, "size"):
            image = load_image(image)
        x = preprocess(image, self.loaded.image_config)
        return torch.from_numpy(x)[None].to(self.parts.device, self.parts.vision_dtype)

    @torch.inference_mode()
    def vision(self, pixel_values: torch.Tensor, clock: Clock | None = None) -> VisionOutput:
        """Tower, stage one (unless pruning is off) and projector for ``[B, 3, S, S]`` pixels."""
        clock = clock or self._clock()
        signals = self.parts.vision_signals(pixel_values)
        clock.lap("vision")
        b = self.budgets
        if b.prune:
            o = self.options
            merged, indices = stage_one(
                signals.features, signals.sim, signals.cls_attention, self.parts.grid, b.k1,
                per_region=o.per_region, distance=o.distance, percentile=o.percentile,
            )
            pillars = pillar_mask(signals.cls_attention.float().gather(1, indices), o.percentile)
        else:
            merged, pillars = signals.features, None
            indices = torch.arange(b.num_patches, device=merged.device).expand(merged.shape[0], -1)
        clock.lap("stage_one")
        tokens = self.parts.projector(merged)
        clock.lap("projector")
        return VisionOutput(tokens, indices, pillars)

    @torch.inference_mode()
    def prefill(self, vision: VisionOutput, prompt: Prompt, clock: Clock | None = None) -> PrefillOutput:
        """Run the prompt through the LLM with stage two before layer ``L`` (batch 1)."""
        clock = clock or self._clock()
        p, b = self.parts, self.budgets
        dev = p.device
        before = torch.tensor([prompt.before], device=dev)
        after = torch.tensor([prompt.after], device=dev)
        hidden = torch.cat([p.embed(before), vision.tokens.to(p.dtype), p.embed(after)], dim=1)
        nb, nc, k1 = len(prompt.before), len(prompt.after), vision.tokens.shape[1]
        pos = position_ids(nb, vision.indices, nc, b.num_patches)
        cache = KVCache()
        kept = None
        layer_input = p.run_layers(hidden, pos, cache, 0, b.layer - 1)
        split = p.run_layers(layer_input, pos, cache, b.layer - 1, b.layer)
        clock.lap("prefix")
        scores = p.last_token_attention(b.layer - 1, layer_input, pos, cache)[:, nb : nb + k1]
        hidden = split
        if b.prune:
            kept = stage_two(scores, b.k2)
            rows = torch.cat([torch.arange(nb, device=dev), nb + kept[0], nb + k1 + torch.arange(nc, device=dev)])
            hidden, pos = hidden[:, rows], pos[:, rows]
        clock.lap("stage_two")
        hidden = p.run_layers(hidden, pos, cache, b.layer, b.num_layers)
        logits = p.logits(hidden[:, -1:])
        clock.lap("suffix")
        return PrefillOutput(logits, cache, kept, decode_position(nb, nc, b.num_patches, 0), split, scores)

    @torch.inference_mode()
    def decode_step(self, token: int, position: int, cache: KVCache) -> torch.Tensor:
        """One generated token through every layer (each with its own cache) → ``[1, V]`` logits."""
        p = self.parts
        hidden = p.embed(torch.tensor([[token]], device=p.device))
        pos = torch.tensor([[position]], device=p.device)
        return p.logits(p.run_layers(hidden, pos, cache, 0, p.num_layers))

    # ---- the whole job ----------------------------------------------------------------------
    def generate(
        self,
        image,
        prompt: str,
        sampling: SamplingConfig | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (a path or PIL image)."""
        sampling = sampling or SamplingConfig()
        tok = self.loaded.tokenizer
        prompt_ids = build_prompt(tok, prompt, self.loaded.image_token_id)
        check_context(prompt_ids, self.budgets.num_patches, sampling.max_new_tokens, self.parts.config.text_config.max_position_embeddings)
        clock = self._clock()
        pixels = self.pixel_values(image)
        clock.lap("preprocess")
        vision = self.vision(pixels, clock)
        pre = self.prefill(vision, prompt_ids, clock)
        clock.first_token()
        step = lambda token, i: self.decode_step(token, pre.next_position + i, pre.cache)
        generated = decode_loop(pre.logits, step, sampling, self.eos_ids(), on_token)
        clock.finish(len(generated))
        s1 = vision.indices[0].tolist()
        s2 = None if pre.stage_two is None else vision.indices[0, pre.stage_two[0]].tolist()
        return GenerationResult(
            prompt=prompt_ids,
            generated_ids=generated,
            text=tok.decode(generated, skip_special_tokens=True).strip(),
            stage_one_indices=s1,
            stage_two_indices=s2,
            budgets=self.budgets,
            timings_ms=clock.ms,
            kv_cache_bytes=pre.cache.nbytes(),
            backend="torch",
        )

    def _clock(self) -> Clock:
        return Clock(torch.cuda.synchronize if self.parts.device.type == "cuda" else None)

    def eos_ids(self) -> set[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.loaded.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, (list, tuple)) else ({int(eos)} if eos is not None else set())
