"""PyTorch generation with Nüwa pruning: the ground truth every exported backend is held to.

Stage one after the vision tower, spatial positions, stage two before layer ``L``, and decoding
with two KV groups (layers ``[0, L)`` hold ``b + K1 + c`` prompt entries, layers ``[L, N)`` hold
``b + K2 + c``), all through the one generation core (:mod:`nuwa_export.generation`) over
:class:`TorchStages`. The model instance is only read: its modules are called in order, nothing
on it or on its classes is replaced. With pruning off the result equals HF ``generate``.
Opened through :func:`nuwa_export.runtime.open_runner`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nuwa_export import generation
from nuwa_export.constants import DEFAULT_MAX_BATCH
from nuwa_export.errors import NuwaError
from nuwa_export.generation import Clock, GenerationResult, Request, Transfers
from nuwa_export.image import load_image, preprocess
from nuwa_export.models.decoder import KVCache
from nuwa_export.models.families import Family
from nuwa_export.models.loader import LoadedModel
from nuwa_export.prompt import Prompt
from nuwa_export.pruning import Budgets, ImagePlan
from nuwa_export.pruning.spec import StageOneSpec, pillars
from nuwa_export.sampling import SamplingConfig


@dataclass
class VisionOutput:
    """``tokens [B, K1, D_llm]`` projected; ``indices [B, K1]`` int64 ascending patch indices.

    ``pillars [B, K1]`` bool marks the stage-one anchors that are pillars (anchor score at or
    above the ``percentile`` quantile, docs/algorithm.md §2.4); None when pruning is off.
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    pillars: torch.Tensor | None = None


class Reference:
    """Nüwa generation on a loaded model of any family (its parts), with ``budgets`` and stage
    one's ``spec`` resolved by the family."""

    name = "torch"
    #: requests side by side by default (as exports); the reference takes any batch
    max_batch: int | None = None

    def __init__(self, loaded: LoadedModel, budgets: Budgets, spec: StageOneSpec):
        self.loaded = loaded
        self.parts = loaded.parts
        self.budgets = budgets
        if budgets.num_patches != self.parts.num_patches or budgets.num_layers != self.parts.num_layers:
            raise NuwaError("budgets were resolved for another model")
        #: stage one's settings (the family's defaults filled in)
        self.spec = spec
        self.family: Family = loaded.family
        self.plan: ImagePlan = self.family.plan(self.parts.grid, budgets)

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
        out = self.parts.vision_tokens(pixel_values, self.budgets, self.spec, lap=(clock or self.clock()).lap)
        return VisionOutput(out.tokens, out.indices, None if out.scores is None else pillars(out.scores, self.spec))

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

    # ---- what every runner offers (nuwa_export.runtime.runner.Runner) -------------------------
    def stages(self) -> TorchStages:
        return TorchStages(self)

    def session(self) -> generation.Session:
        """A continuous-batching session (any number of rows; :class:`nuwa_export.generation.Session`)."""
        return generation.Session(self.stages())

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def image_config(self):
        return self.loaded.image_config

    def stage_one_pillars(self, image, stage_one_indices: list[int]) -> list[bool] | None:
        """Which stage-one anchors are pillars (stage one run again, deterministically), or None
        when pruning is off or the indices are not this model's."""
        vision = self.vision(self.pixel_values(image))
        if vision.pillars is not None and vision.indices[0].tolist() == stage_one_indices:
            return vision.pillars[0].tolist()
        return None

    def close(self) -> None:
        """Nothing to release (the model is freed with the object)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def clock(self) -> Clock:
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
        self.plan = reference.plan
        self.device = self.parts.device
        self.transfers = Transfers()

    def clock(self) -> Clock:
        return self.reference.clock()

    def plan_for(self, image) -> ImagePlan:
        return self.plan

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

    def past_length(self, past: KVCache) -> int:
        return past.length(min(past.keys))

    def join_past(self, pasts: list[KVCache], shifts: list[int], room: int) -> KVCache:
        out = KVCache()
        for d in ("keys", "values"):
            setattr(out, d, {i: torch.cat([torch.nn.functional.pad(getattr(p, d)[i], (0, 0, s, 0)) for p, s in zip(pasts, shifts)])
                             for i in getattr(pasts[0], d)})
        return out

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
