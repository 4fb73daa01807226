"""Load an HF-format checkpoint of a supported family (safetensors only) with its tokenizer and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nuwa_export.atomic import check_utf8_path
from nuwa_export.errors import NuwaError
from nuwa_export.image import ImageConfig
from nuwa_export.models.families import Family, family_for
from nuwa_export.models.families.parts import Parts
from nuwa_export.models.registry import resolve
from nuwa_export.precision import torch_dtype
from nuwa_export.pruning import BudgetRequest, Budgets
from nuwa_export.pruning.spec import StageOneSpec


@dataclass
class LoadedModel:
    model: object  # the transformers model (LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)
    parts: Parts  # what the family drives (its folder's parts.py)
    tokenizer: object
    image_config: ImageConfig
    model_id: str
    path: Path

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def family(self) -> Family:
        return family_for(self.model.config)

    def resolve(self, request: BudgetRequest | None = None) -> tuple[Budgets, StageOneSpec]:
        """The family's budgets and stage-one settings for ``request`` on this model."""
        return resolve_request(self.family, self.parts.grid, self.parts.num_layers, request)


def resolve_request(family: Family, grid: tuple[int, int], num_layers: int, request: BudgetRequest | None) -> tuple[Budgets, StageOneSpec]:
    """``request`` (None: the defaults) resolved by ``family`` into budgets and stage-one
    settings, refused in one line if impossible."""
    request = request or BudgetRequest()
    budgets = family.resolve_budgets(grid, num_layers, request)
    return budgets, family.stage_one(budgets, grid, request)


#: Any one of these makes a tokenizer transformers can load without extra packages.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint; refuses pickle-only checkpoints."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        extra = f" (found {', '.join(pickles)}: pickle files are never loaded)" if pickles else ""
        raise NuwaError(f"no .safetensors weights in {path}{extra}")
    return files


def check_weight_files(files: list[Path]) -> None:
    """Read each file's safetensors header (not its tensors): a file that is not safetensors, or
    is truncated, is refused here rather than deep inside transformers."""
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise NuwaError(f"{f} is not a valid safetensors file ({(str(e).splitlines() or [''])[0]})") from None


def check_tokenizer_files(path: Path) -> None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise NuwaError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of the base model there")


def pick_device(device: str | None) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise NuwaError(f"unknown --device '{device}' for the torch backend (auto, cpu, cuda, cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NuwaError(f"--device {device} asked for, but torch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise NuwaError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def pick_dtype(name: str | None, config_dtype, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU, the checkpoint's dtype (else float16) on a GPU."""
    if name not in (None, "auto"):
        return torch_dtype(name)
    if device.type == "cpu":
        return torch.float32
    return config_dtype if isinstance(config_dtype, torch.dtype) else torch.float16


@dataclass(frozen=True)
class CheckpointInfo:
    """What can be known of a checkpoint without loading its weights."""

    path: Path
    model_id: str
    config: object  # the transformers config (LlavaConfig, Qwen2_5_VLConfig)
    image_size: int  # the image side the vision tower runs at (fixed by the tower, or --image-size)

    @property
    def family(self) -> Family:
        return family_for(self.config)

    @property
    def grid(self) -> tuple[int, int]:
        return self.family.grid(self.config, self.image_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_layers(self) -> int:
        return self.family.num_layers(self.config)

    def resolve(self, request: BudgetRequest | None = None) -> tuple[Budgets, StageOneSpec]:
        """The family's budgets and stage-one settings for ``request`` (before any weight is read)."""
        return resolve_request(self.family, self.grid, self.num_layers, request)


def inspect_checkpoint(model: str, image_size: int | None = None) -> CheckpointInfo:
    """Resolve ``model`` and read and check its config (fast: no weights are read).

    ``image_size`` (``--image-size``): the image side for families whose tower takes any size
    (Qwen2.5-VL; None is the family's default); refused for towers of one fixed size unless equal.
    """
    from transformers import AutoConfig

    path, model_id = resolve(model)
    check_utf8_path(path, "checkpoint")  # tokenizers and safetensors open only UTF-8 paths
    if not (path / "config.json").is_file():
        raise NuwaError(f"{path} has no config.json; is it an HF checkpoint directory?")
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # notes about configs of other families would be lines of their own
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(path)
    except Exception as e:  # a user's file: transformers and huggingface_hub raise many types for it
        raise NuwaError(f"cannot read {path / 'config.json'}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    family = family_for(config)  # an unknown model_type
    family.check_config(config)  # a config the family cannot take
    size = family.image_size(config, image_size)
    check_weight_files(weight_files(path))
    check_tokenizer_files(path)
    return CheckpointInfo(path, model_id, config, size)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines if "Error:" in line), lines[0] if lines else type(e).__name__)
    return detail if len(detail) <= 160 else detail[:157] + "..."


def load(
    model: str | CheckpointInfo, *, dtype: str | None = "auto", device: str | None = "auto", vision_dtype: str | None = None,
    text_attention: str = "sdpa",
) -> LoadedModel:
    """Resolve ``model`` (alias, ``demo``, directory, hub id) and load it for Nüwa.

    ``vision_dtype`` puts the vision tower and projector in another dtype than the LLM (exports
    keep them in float32 so that stage one selects exactly what the reference selects).
    ``text_attention`` is the LLM's attention implementation: ``sdpa`` (fused kernels in torch),
    or ``eager`` for export: its 4-D ``q @ k^T`` becomes one fused MatMul in ONNX Runtime, where
    SDPA's traced decomposition copies every cached key through a Transpose each step.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    info = model if isinstance(model, CheckpointInfo) else inspect_checkpoint(model)
    path, model_id, config = info.path, info.model_id, info.config
    family = info.family
    dev = pick_device(device)
    chosen = pick_dtype(dtype, getattr(config, "dtype", None), dev)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' load report would be many lines; ours is one
    try:
        net, report = family.model_class().from_pretrained(
            path, dtype=chosen, use_safetensors=True, attn_implementation=family.attn_implementation(text_attention),
            output_loading_info=True, ignore_mismatched_sizes=True,  # refused below, in one line
        )
    except (RuntimeError, ValueError, OSError) as e:
        raise NuwaError(f"cannot load the weights in {path}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = sorted(report.get("missing_keys") or []) + sorted(str(k[0] if isinstance(k, tuple) else k) for k in report.get("mismatched_keys") or [])
    if bad:
        more = f" and {len(bad) - 2} more" if len(bad) > 2 else ""
        raise NuwaError(f"the weights in {path} do not fit its config.json: {', '.join(bad[:2])}{more} missing or of another shape")
    net.to(dev).eval()
    if vision_dtype is not None:
        family.set_vision_dtype(net, torch_dtype(vision_dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a user's files: many types
        raise NuwaError(f"cannot load the tokenizer in {path}: {_first_line(e)}") from None
    parts = family.parts(net, info.image_size)
    image_config = family.image_config(path, parts.image_size)
    return LoadedModel(net, parts, tokenizer, image_config, model_id, path)
