"""Per-stage comparison of an exported pipeline against the PyTorch reference (``nuwa-verify``).

Used right after export (ONNX Runtime) and by ``nuwa-verify`` for every backend present.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nuwa_export.sampling import SamplingConfig

ATOL = RTOL = 1e-4


@dataclass(frozen=True)
class Check:
    stage: str
    ok: bool
    detail: str
    max_abs: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _close(stage: str, got, want) -> Check:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Check(stage, False, f"shape {got.shape} vs {want.shape}")
    err = np.abs(got - want)
    ok = bool(np.allclose(got, want, atol=ATOL, rtol=RTOL))
    return Check(stage, ok, f"max {err.max():.2e}, median {np.median(err):.2e}, p99 {np.quantile(err, 0.99):.2e}", float(err.max()))


def _same(stage: str, got, want, overlap: bool = False) -> Check:
    got, want = np.asarray(got), np.asarray(want)
    same = got.shape == want.shape and bool(np.array_equal(got, want))
    detail = "identical" if same else "differ"
    if overlap and got.size and want.size:
        common = len(set(got.ravel().tolist()) & set(want.ravel().tolist()))
        detail += f" (overlap {common}/{want.size})"
    return Check(stage, same, detail)


def compare(pipeline, reference, image, prompt: str, max_new_tokens: int = 20) -> list[Check]:
    """Run both on ``image`` / ``prompt`` (greedy, no EOS stop) and compare stage by stage."""
    import torch

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, stop_at_eos=False)
    trace: dict = {}
    got = pipeline.generate(image, prompt, sampling, trace=trace)
    want = reference.generate(image, prompt, sampling)
    with torch.inference_mode():
        vision = reference.vision(reference.pixel_values(image))
        pre = reference.prefill(vision, got.prompt)
    checks = [
        _close("vision tokens", trace["vision_tokens"], vision.tokens.float().cpu().numpy()),
        _same("stage-one indices", trace["patch_indices"], vision.indices.cpu().numpy()),
        _close("hidden at split", trace["split_hidden"], pre.split_hidden.float().cpu().numpy()),
        _close("stage-two scores", trace["stage_two_scores"], pre.stage_two_scores.float().cpu().numpy()),
    ]
    if pre.stage_two is not None:
        checks.append(_same("stage-two indices", trace["stage_two"], pre.stage_two.cpu().numpy(), overlap=True))
    checks.append(_close("first logits", trace["first_logits"], pre.logits.float().cpu().numpy()))
    checks.append(_same(f"generated ids ({max_new_tokens})", got.generated_ids, want.generated_ids))
    return checks


def available_backends(directory) -> list[tuple[str, str]]:
    """(backend, device) pairs this machine can run for the export at ``directory``."""
    out = []
    try:
        import onnxruntime as ort

        out.append(("ort", "cpu"))
        if "CUDAExecutionProvider" in ort.get_available_providers():
            out.append(("ort", "cuda"))
    except ImportError:
        pass
    try:
        import torch

        if (directory / "engines").is_dir() and torch.cuda.is_available():
            out.append(("trt", "cuda"))
    except ImportError:
        pass
    return out


def verify_cli(args) -> int:
    """``nuwa-verify``: a table (or JSON) of every stage for every backend; exit 1 on failure."""
    import json
    import sys
    from pathlib import Path

    from nuwa_export.errors import NuwaError
    from nuwa_export.export import manifest as mf
    from nuwa_export.image import load_image
    from nuwa_export.models.demo import example_picture
    from nuwa_export.run import reference_for_export
    from nuwa_export.runtime.pipeline import Pipeline

    directory = Path(args.export_dir)
    manifest = mf.read(directory)
    image = load_image(args.image) if args.image else example_picture()
    backends = available_backends(directory)
    if not backends:
        raise NuwaError("no backend to verify: pip install onnxruntime (or onnxruntime-gpu)")
    reference = reference_for_export(directory, manifest, device="cpu", dtype="float32")
    report = {}
    for backend, device in backends:
        pipeline = Pipeline(directory, backend, device)
        try:
            report[f"{backend}-{device}"] = [c.as_dict() for c in compare(pipeline, reference, image, args.prompt, args.max_new_tokens)]
        finally:
            pipeline.close()
    ok = all(c["ok"] for checks in report.values() for c in checks)
    if args.json:
        print(json.dumps({"export": str(directory), "ok": ok, "backends": report}))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"nuwa-verify {directory} (reference: PyTorch, float32, CPU)", title_justify="left")
        for col in ("backend", "stage", "ok", "detail"):
            table.add_column(col)
        for name, checks in report.items():
            for c in checks:
                table.add_row(name, c["stage"], "[green]yes[/]" if c["ok"] else "[red]NO[/]", c["detail"])
        Console().print(table)
    if not ok:
        print("nuwa-verify: error: some stages differ from the reference", file=sys.stderr)
    return 0 if ok else 1
