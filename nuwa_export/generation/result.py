"""What every runner returns: the result record, per-stage timings, host↔device transfers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nuwa_export.prompt import Prompt
from nuwa_export.pruning import Budgets


@dataclass
class GenerationResult:
    prompt: Prompt
    generated_ids: list[int]
    text: str
    stage_one_indices: list[int]
    stage_two_indices: list[int] | None  # patch indices that reach layers [L, N); None unpruned
    budgets: Budgets
    timings_ms: dict[str, float] = field(default_factory=dict)
    kv_cache_bytes: int = 0
    backend: str = "torch"
    batch_size: int = 1  # requests prefilled side by side with this one (the prefill timings are theirs)
    transfers: dict = field(default_factory=dict)  # bytes host↔device: prefill, decode_per_step
    finish_reason: str | None = None  # stop (EOS), length (max_new_tokens) or cancelled

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "input_ids": self.prompt.input_ids,
            "image_token_id": self.prompt.image_token_id,
            "generated_ids": self.generated_ids,
            "text": self.text,
            "stage_one_indices": self.stage_one_indices,
            "stage_two_indices": self.stage_two_indices,
            "budgets": self.budgets.as_dict(),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "kv_cache_bytes": self.kv_cache_bytes,
        }


@dataclass
class Transfers:
    """Bytes the runtime copies between host memory and the engine's tensors, counted where they
    are made (:meth:`to_device`, :meth:`to_host` of the stages). On a CPU engine host and
    device are one memory; the count is what a GPU engine would copy."""

    host_to_device: int = 0
    device_to_host: int = 0

    def snapshot(self) -> Transfers:
        return Transfers(self.host_to_device, self.device_to_host)

    def since(self, start: Transfers) -> dict:
        return {"host_to_device": self.host_to_device - start.host_to_device, "device_to_host": self.device_to_host - start.device_to_host}

    @staticmethod
    def per(counts: dict, steps: int) -> dict:
        return {k: (v / steps if steps else 0.0) for k, v in counts.items()}


class Clock:
    """Per-stage wall-clock timings; ``sync`` is called before each reading (CUDA streams)."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sync:
            self.sync()
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now

    def first_token(self) -> None:
        self.ms["time_to_first_token"] = sum(self.ms.values())

    def finished(self, generated: int) -> dict[str, float]:
        """The timings of a row that finished now with ``generated`` tokens: the laps so far, its
        decode from the last lap (the prefill's end) to now, per token and in total. The clock
        itself is left as it is, for the rows still decoding."""
        if self.sync:
            self.sync()
        ms = dict(self.ms)
        ms["decode"] = (time.perf_counter() - self._t) * 1e3
        ms["decode_per_token"] = ms["decode"] / max(1, generated - 1)
        ms["total"] = ms["time_to_first_token"] + ms["decode"]
        return ms
