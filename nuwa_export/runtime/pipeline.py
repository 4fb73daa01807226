"""Answer questions from an export directory: the generation core (nuwa_export.generation) over
the three graphs of one backend (:class:`EngineStages`), one request or a batch. Opened through
:func:`nuwa_export.runtime.open_runner`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from nuwa_export import generation, names
from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.generation import Clock, GenerationResult, Request, Transfers
from nuwa_export.models.families import Family
from nuwa_export.pruning import ImagePlan
from nuwa_export.runtime.backend import Backend
from nuwa_export.runtime.exports import budgets_of, family_of, image_config_of, plan_of
from nuwa_export.sampling import SamplingConfig


class Pipeline:
    """An export directory and one backend; :meth:`generate` answers one question."""

    def __init__(self, directory: str | Path, backend: Backend, manifest: mf.Manifest) -> None:
        """``manifest``: the directory's manifest, already read and checked
        (:func:`~nuwa_export.runtime.exports.read_export`); ``backend`` runs its graphs."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        self.directory = Path(directory)
        self.manifest = manifest
        self.budgets = budgets_of(self.manifest)
        self.image_config = image_config_of(self.manifest)
        self.family: Family = family_of(self.manifest)
        self.plan: ImagePlan = plan_of(self.manifest)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        except Exception as e:  # a tokenizer/ that passed its sha256 yet does not load
            why = " ".join(str(e).split())[:300] or type(e).__name__
            raise NuwaError(f"cannot load the tokenizer in {self.tokenizer_dir} ({why}); re-run nuwa-export") from None
        try:
            self.embeddings = load_file(self.directory / names.EMBEDDINGS)["embed_tokens"]
        except (SafetensorError, OSError, KeyError) as e:  # passed its sha256 and header check, yet broken
            why = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise NuwaError(f"cannot load {self.directory / names.EMBEDDINGS} ({why}); re-run nuwa-export") from None
        self.backend = backend
        self.name = backend.name
        self.embeddings = self.embeddings.to(self.backend.device)  # token ids are looked up where the engine runs

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def max_batch(self) -> int:
        return self.manifest.max_batch

    def close(self) -> None:
        self.backend.close()

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / names.TOKENIZER_DIR

    def stage_one_pillars(self, image, stage_one_indices: list[int]) -> None:
        """The graphs return indices only: pillars and collectors are not told apart."""
        return None

    def stages(self) -> EngineStages:
        return EngineStages(self)

    def session(self) -> generation.Session:
        """A continuous-batching session of at most ``max_batch`` rows (requests join while
        others decode; :class:`nuwa_export.generation.Session`)."""
        return generation.Session(self.stages(), capacity=self.max_batch)

    def generate(
        self,
        image,
        prompt: str,
        sampling: SamplingConfig | None = None,
        on_token: Callable[[int], None] | None = None,
        trace: dict | None = None,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (path or PIL image). ``trace`` collects intermediates
        (NumPy arrays, as the graphs return them)."""
        result = generation.generate(self.stages(), image, prompt, sampling, on_token, trace)
        if trace is not None:
            trace.update({k: _numpy(v) for k, v in trace.items()})
        return result

    def generate_batch(self, requests: Sequence[Request], batch_size: int | None = None) -> list[GenerationResult]:
        """Answer ``requests`` (different images, prompts, sampling and token limits), at most
        ``batch_size`` (default and cap: the export's ``max_batch``) side by side; results in
        request order, row for row what each request gives alone."""
        return generation.generate_batches(self.stages(), requests, min(batch_size or self.max_batch, self.max_batch))


class EngineStages:
    """:class:`~nuwa_export.generation.Stages` over an export's graphs: torch tensors on the
    backend's device in and out; KV groups are the backend's (:mod:`nuwa_export.runtime.kv`):
    device tensors it writes and binds back, or buffers it updates in place."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.backend = pipeline.backend
        llm = pipeline.manifest.llm
        self.name = self.backend.name
        self.device = self.backend.device
        self.tokenizer = pipeline.tokenizer
        self.image_config = pipeline.image_config
        self.budgets = pipeline.budgets
        self.image_token_id = llm.image_token_id
        self.max_positions = llm.max_positions
        self.eos_token_ids = set(llm.eos_token_ids)
        self.vocab_size = llm.vocab_size
        self.family = pipeline.family
        self.plan = pipeline.plan
        self.transfers = Transfers()

    def clock(self) -> Clock:
        return Clock(torch.cuda.synchronize if self.device.type == "cuda" else None)

    def plan_for(self, image) -> ImagePlan:
        """The export's plan: its family's images all become the one grid it was exported for."""
        return self.plan

    def check_prompt(self, prompt) -> None:
        if max(prompt.before + prompt.after, default=0) >= self.vocab_size:
            raise NuwaError(f"the tokenizer in {self.pipeline.tokenizer_dir} makes token ids beyond llm.vocab_size {self.vocab_size}; re-run nuwa-export")

    def to_device(self, arrays) -> list[torch.Tensor]:
        out = [torch.tensor(a, dtype=torch.long).to(self.device) for a in arrays]
        self.transfers.host_to_device += sum(t.numel() * t.element_size() for t in out)
        return out

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        self.transfers.device_to_host += t.numel() * t.element_size()
        return t.cpu()

    def vision(self, pixel_values: np.ndarray, clock: Clock | None = None):
        px = torch.from_numpy(np.ascontiguousarray(pixel_values, np.float32)).to(self.device)
        self.transfers.host_to_device += px.numel() * px.element_size()
        return self.backend.vision(px)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.pipeline.embeddings
        return table.index_select(0, ids.reshape(-1)).reshape(*ids.shape, table.shape[1])

    def empty_past(self, start: int, end: int, batch: int, capacity: int = 0):
        return self.backend.empty_past(start, end, batch, capacity, self.pipeline.embeddings.dtype)

    def past_bytes(self, past) -> int:
        return self.backend.past_bytes(past)

    def past_length(self, past) -> int:
        return self.backend.past_length(past)

    def join_past(self, pasts: list, shifts: list[int], room: int):
        return self.backend.join_past(pasts, shifts, room)

    def take_rows(self, past, rows: torch.Tensor):
        return self.backend.take_rows(past, rows)

    def prefix(self, embeds, positions, vision_start, pad, past):
        return self.backend.prefix(embeds, positions, vision_start, pad, past)

    def suffix(self, hidden, positions, pad, past):
        return self.backend.suffix(hidden, positions, pad, past)


def _numpy(v):
    if isinstance(v, torch.Tensor):
        return v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    if isinstance(v, list):
        return [_numpy(x) for x in v]
    return v
