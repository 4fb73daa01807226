"""Answer questions from an export directory: the generation core (nuwa_export.generation) over
the three graphs of one backend (:class:`EngineStages`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nuwa_export.errors import NuwaError
from nuwa_export.export import manifest as mf
from nuwa_export import generation
from nuwa_export.generation import Clock, GenerationResult
from nuwa_export.image import ImageConfig
from nuwa_export.pruning import Budgets
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

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / TOKENIZER_DIR

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest.grid)

    def stage_one_pillars(self, image, stage_one_indices: list[int]) -> None:
        """The graphs return indices only: pillars and collectors are not told apart."""
        return None

    def stages(self) -> EngineStages:
        return EngineStages(self)

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
            trace.update({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in trace.items()})
        return result


class EngineStages:
    """:class:`~nuwa_export.generation.Stages` over an export's graphs (NumPy in and out of the
    backend; CPU torch tensors, sharing memory, on the core's side)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.backend = pipeline.backend
        llm = pipeline.manifest.llm
        self.name = self.backend.name
        self.tokenizer = pipeline.tokenizer
        self.image_config = pipeline.image_config
        self.budgets = pipeline.budgets
        self.image_token_id = llm.image_token_id
        self.max_positions = llm.max_positions
        self.eos_token_ids = set(llm.eos_token_ids)
        self.vocab_size = llm.vocab_size

    def clock(self) -> Clock:
        return Clock()

    def check_prompt(self, prompt) -> None:
        if max(prompt.before + prompt.after, default=0) >= self.vocab_size:
            raise NuwaError(f"the tokenizer in {self.pipeline.tokenizer_dir} makes token ids beyond llm.vocab_size {self.vocab_size}; re-run nuwa-export")

    def vision(self, pixel_values: np.ndarray, clock: Clock | None = None):
        tokens, indices = self.backend.vision(pixel_values)
        return torch.from_numpy(tokens), torch.from_numpy(indices)

    def embed(self, ids) -> torch.Tensor:
        return torch.from_numpy(self.pipeline.embeddings[list(ids)][None])

    def empty_past(self, start: int, end: int) -> list[np.ndarray]:
        return self.pipeline._empty_past(range(start, end))

    def past_bytes(self, past: list[np.ndarray]) -> int:
        return int(sum(a.nbytes for a in past))

    def prefix(self, embeds, positions, vision_start, past):
        hidden, present, scores = self.backend.prefix(_host(embeds), _host(positions), vision_start, past)
        return torch.from_numpy(hidden), present, torch.from_numpy(np.ascontiguousarray(scores))

    def suffix(self, hidden, positions, past):
        return self.backend.suffix(_host(hidden), _host(positions), past)


def _host(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy())
