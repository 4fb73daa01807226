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

from nuwa_export import generation
from nuwa_export.constants import DEFAULT_MAX_BATCH
from nuwa_export.errors import NuwaError
from nuwa_export.generation import Batch, Clock, GenerationResult, Layout, Request, Transfers
from nuwa_export.image import load_image, preprocess
from nuwa_export.models.decoder import KVCache
from nuwa_export.models.loader import LoadedModel
from nuwa_export.prompt import Prompt
from nuwa_export.pruning import Budgets
from nuwa_export.pruning.spec import run_stage_one
from nuwa_export.sampling import SamplingConfig


@dataclass(frozen=True)
class StageOneOptions:
    """Stage-one knobs a user gave; None is the family's default (docs/algorithm.md §6, §10)."""

    per_region: int | None = None
    distance: float | None = None
    percentile: float | None = None


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
    """Nüwa generation on a loaded model of any family (its adapter's parts)."""

    def __init__(self, loaded: LoadedModel, budgets: Budgets, stage_one_options: StageOneOptions | None = None):
        self.loaded = loaded
        self.parts = loaded.parts
        self.budgets = budgets
        if budgets.num_patches != self.parts.num_patches or budgets.num_layers != self.parts.num_layers:
            raise NuwaError("budgets were resolved for another model")
        o = stage_one_options or StageOneOptions()
        #: stage one's settings (pruning.StageOneSpec), the family's defaults filled in
        self.spec = self.family.stage_one(budgets, self.parts.grid, o.per_region, o.distance, o.percentile)

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
            merged, indices, pillars = run_stage_one(signals.features, signals.sim, signals.cls_attention, self.parts.grid, b.k1, self.spec)
        else:
            merged, pillars = signals.features, None
            indices = torch.arange(b.num_patches, device=merged.device).expand(merged.shape[0], -1)
        clock.lap("stage_one")
        tokens = self.parts.projector(merged)
        clock.lap("projector")
        return VisionOutput(tokens, indices, pillars)

    def prefill(self, vision: VisionOutput, prompt: Prompt, clock: Clock | None = None) -> PrefillOutput:
        """Run the prompt through the LLM with stage two before layer ``L`` (batch 1)."""
        batch = Batch((Layout(prompt, self.family.positions(self.parts.grid)),))
        pre = generation.prefill(self.stages(), batch, vision.tokens, vision.indices, clock or self._clock())
        cache = KVCache()  # the two groups hold disjoint layers: one cache for decode_step
        for group in (pre.kv.prefix, pre.kv.suffix):
            cache.keys.update(group.keys)
            cache.values.update(group.values)
        return PrefillOutput(pre.logits, cache, pre.stage_two, batch.rows[0].decode_position(0), pre.split_hidden, pre.stage_two_scores)

    @torch.inference_mode()
    def decode_step(self, token: int, position: int, cache: KVCache) -> torch.Tensor:
        """One generated token through every layer (each with its own cache) → ``[1, V]`` logits."""
        p = self.parts
        hidden = p.embed(torch.tensor([[token]], device=p.device))
        pos = torch.tensor([[position]], device=p.device)
        if p.position_rows > 1:
            pos = pos[None].expand(p.position_rows, -1, -1)
        return p.logits(p.run_layers(hidden, pos, cache, 0, p.num_layers))

    # ---- the whole job ----------------------------------------------------------------------
    def generate(
        self,
        image,
        prompt: str,
        sampling: SamplingConfig | None = None,
        on_token: Callable[[int], None] | None = None,
        trace: dict | None = None,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (a path or PIL image). ``trace`` collects intermediates
        (torch tensors; see :func:`nuwa_export.generation.generate`)."""
        return generation.generate(self.stages(), image, prompt, sampling, on_token, trace)

    def generate_batch(self, requests: list[Request], batch_size: int | None = None) -> list[GenerationResult]:
        """Answer ``requests``, ``batch_size`` (default 8, as exports) side by side (left-padded,
        one forward per step for the batch); results in request order, row for row what each
        gives alone."""
        return generation.generate_batches(self.stages(), requests, batch_size or DEFAULT_MAX_BATCH)

    # ---- what every runner offers (run.py, profile.py, eval) ----------------------------------
    def stages(self) -> TorchStages:
        return TorchStages(self)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def image_config(self):
        return self.loaded.image_config

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.parts.grid)

    @property
    def family(self):
        """The model family adapter of the loaded checkpoint (prompt template, grounding format)."""
        from nuwa_export.models.families import family_for

        return family_for(self.parts.config)

    def stage_one_pillars(self, image, stage_one_indices: list[int]) -> list[bool] | None:
        """Which stage-one anchors are pillars (stage one run again, deterministically), or None
        when pruning is off or the indices are not this model's."""
        vision = self.vision(self.pixel_values(image))
        if vision.pillars is not None and vision.indices[0].tolist() == stage_one_indices:
            return vision.pillars[0].tolist()
        return None

    def close(self) -> None:
        """Nothing to release (the model is freed with the object)."""

    def _clock(self) -> Clock:
        return Clock(torch.cuda.synchronize if self.parts.device.type == "cuda" else None)

    def eos_ids(self) -> set[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.loaded.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, (list, tuple)) else ({int(eos)} if eos is not None else set())


class TorchStages:
    """:class:`~nuwa_export.generation.Stages` over a loaded model: each KV group is a
    :class:`KVCache` holding its own layers, on the model's device."""

    name = "torch"

    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        self.parts = reference.parts
        self.tokenizer = reference.loaded.tokenizer
        self.image_config = reference.loaded.image_config
        self.budgets = reference.budgets
        self.image_token_id = reference.loaded.image_token_id
        self.max_positions = self.parts.config.text_config.max_position_embeddings
        self.eos_token_ids = reference.eos_ids()
        self.family = reference.family
        self.positions = self.family.positions(self.parts.grid)
        self.device = self.parts.device
        self.transfers = Transfers()

    def clock(self) -> Clock:
        return self.reference._clock()

    def check_prompt(self, prompt: Prompt) -> None:
        pass

    def to_device(self, arrays) -> list[torch.Tensor]:
        out = [torch.tensor(a, dtype=torch.long, device=self.device) for a in arrays]
        self.transfers.host_to_device += sum(t.numel() * 8 for t in out)
        return out

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        self.transfers.device_to_host += t.numel() * t.element_size()
        return t.cpu()

    def vision(self, pixel_values, clock: Clock | None = None):
        px = torch.from_numpy(pixel_values).to(self.parts.device, self.parts.vision_dtype)
        out = self.reference.vision(px, clock)
        return out.tokens, out.indices

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.parts.embed(ids)

    def empty_past(self, start: int, end: int, batch: int, capacity: int = 0) -> KVCache:
        return KVCache()

    def past_bytes(self, past: KVCache) -> int:
        return past.nbytes()

    def take_rows(self, past: KVCache, rows: torch.Tensor) -> KVCache:
        out = KVCache()
        out.keys = {i: t.index_select(0, rows) for i, t in past.keys.items()}
        out.values = {i: t.index_select(0, rows) for i, t in past.values.items()}
        return out

    @torch.inference_mode()
    def prefix(self, embeds, positions, vision_start, pad, past: KVCache):
        p, b = self.parts, self.budgets
        if past.length(0):  # a decode step: no stage-two scores needed
            return p.run_layers(embeds, positions, past, 0, b.layer, pad), past, None
        layer_input = p.run_layers(embeds, positions, past, 0, b.layer - 1, pad)
        split = p.run_layers(layer_input, positions, past, b.layer - 1, b.layer, pad)
        row = p.stage_two_row(b.layer - 1, layer_input, positions, past, pad)
        columns = vision_start[:, None] + torch.arange(b.k1, device=row.device)[None, :]
        return split, past, row.gather(1, columns)

    @torch.inference_mode()
    def suffix(self, hidden, positions, pad, past: KVCache):
        p = self.parts
        return p.logits(p.run_layers(hidden, positions, past, self.budgets.layer, self.budgets.num_layers, pad)[:, -1:]), past
