"""Export directories that pass their sha256 yet are wrong, and bad output paths, for every verb.

Each broken export re-records the sha256 of what it changed, so only the consistency check
(:mod:`nuwa_export.runtime.consistency`, run whenever an export is opened) or the one-line
handling of ONNX Runtime failures stands between it and a traceback. Every verb must answer
with exit 1 and one line ``<verb>: error: ...`` that names what disagrees, and write nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import save_file

from nuwa_export.names import MANIFEST
from nuwa_export.tools.build import main as build_main
from nuwa_export.tools.profile import main as profile_main
from nuwa_export.tools.run import main as run_main
from nuwa_export.tools.verify import main as verify_main
from tests.helpers import BIN, assert_one_line, read_only_argv, rehash, tree


def _manifest(fn):
    def edit(d: Path) -> None:
        m = json.loads((d / MANIFEST).read_text())
        fn(m)
        (d / MANIFEST).write_text(json.dumps(m))

    return edit


def _file(name: str, fn):
    def edit(d: Path) -> None:
        (d / name).write_bytes(fn((d / name).read_bytes()))
        rehash(d)

    return edit


def _graph(name: str, fn):
    def edit(d: Path) -> None:
        model = onnx.load(d / name)
        fn(model)
        onnx.save(model, d / name)
        rehash(d)

    return edit


def _embeddings(shape, dtype=np.float32, key="embed_tokens"):
    def edit(d: Path) -> None:
        save_file({key: np.zeros(shape, dtype)}, str(d / "embeddings.safetensors"))
        rehash(d)

    return edit


def _drop_node(model):
    del model.graph.node[len(model.graph.node) // 2]


def _unknown_op(model):
    next(n for n in model.graph.node if n.op_type == "MatMul").op_type = "NoSuchOp"


def _one_input_matmul(model):
    """A structurally valid graph ONNX Runtime refuses to load (MatMul with one input)."""
    node = next(n for n in model.graph.node if n.op_type == "MatMul")
    del node.input[1]


def _bad_reshape(model):
    """Loads fine; fails only when run (a head_dim of 33 where 32 divides the hidden size)."""
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.int64 and a.tolist() == [32]:
            t.CopyFrom(numpy_helper.from_array(np.array([33], np.int64), t.name))
            return
    raise AssertionError("no head_dim constant in llm_suffix.onnx")


def _garbage(n: int):
    return lambda data: np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def _offset_gap(data: bytes) -> bytes:
    """Valid JSON header, but the tensor's data starts 8 bytes in (a gap safetensors refuses)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    start, end = header["embed_tokens"]["data_offsets"]
    header["embed_tokens"]["data_offsets"] = [start + 8, end + 8]
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + b"\0" * 8 + data[8 + n :]


#: name → (how to break a copy of the demo export, what the one line must say)
BROKEN = {
    "truncated-graph": (_file("vision.onnx", lambda b: b[: len(b) // 2]), "vision.onnx is not a valid ONNX model (it ends too early"),
    "garbage-graph": (_file("llm_prefix.onnx", _garbage(4000)), "llm_prefix.onnx is not a valid ONNX model"),
    "empty-graph": (_file("llm_suffix.onnx", lambda b: b""), "llm_suffix.onnx is empty"),
    "graph-missing-node": (_graph("llm_suffix.onnx", _drop_node), "which nothing before it defines"),
    "graph-unknown-op": (_graph("llm_prefix.onnx", _unknown_op), "there is no ONNX operator NoSuchOp"),
    "garbage-embeddings": (_file("embeddings.safetensors", _garbage(3000)), "embeddings.safetensors is not a safetensors file"),
    "truncated-embeddings": (_file("embeddings.safetensors", lambda b: b[: len(b) * 2 // 3]), "embeddings.safetensors is truncated"),
    "embeddings-offset-gap": (_file("embeddings.safetensors", _offset_gap), "embeddings.safetensors is not a safetensors file"),
    "embeddings-shape": (_embeddings((602, 64)), "holds embed_tokens [602, 64], but manifest.json llm.vocab_size and llm.hidden_size say [602, 128]"),
    "embeddings-dtype": (_embeddings((602, 128), np.float16), "holds embed_tokens as F16, but manifest.json precision.io is float32"),
    "embeddings-name": (_embeddings((602, 128), key="weight"), "has no embed_tokens tensor"),
    "garbage-tokenizer": (_file("tokenizer/tokenizer.json", lambda b: b"{not json"), "tokenizer.json is not valid JSON"),
    "image-size": (_manifest(lambda m: m["preprocessing"].update(size=336)), "pixel_values has shape [batch, 3, 224, 224], but manifest.json preprocessing.size is 336"),
    "hidden-size": (_manifest(lambda m: m["llm"].update(hidden_size=64)), "but manifest.json llm.hidden_size is 64"),
    "k1": (_manifest(lambda m: m["budgets"].update(stage_one_keep=50)), "image_tokens has shape [batch, 49, 128], but manifest.json budgets.stage_one_keep is 50"),
    "layers": (_manifest(lambda m: (m["llm"].update(num_layers=6), m["budgets"].update(num_layers=6))), "llm_suffix.onnx lacks input past_key_4, but manifest.json says llm.num_layers 6"),
    "split": (_manifest(lambda m: m["budgets"].update(stage_two_layer=3)), "llm_prefix.onnx lacks input past_key_2"),
    "vocab": (_manifest(lambda m: m["llm"].update(vocab_size=700)), "logits has shape [batch, 602], but manifest.json llm.vocab_size is 700"),
    "kv-heads": (_manifest(lambda m: m["llm"].update(num_kv_heads=8)), "but manifest.json llm.num_kv_heads is 8"),
    "llm-dtype": (_manifest(lambda m: m["precision"].update(name="float16", weights="float16", compute="float16", kv="float16", io="float16")),
                  "inputs_embeds is float32, but manifest.json precision.io is float16"),
    "precision-inconsistent": (_manifest(lambda m: m["precision"].update(kv="float16")), "manifest: manifest.precision: precision"),
    "graph-swapped": (_manifest(lambda m: m["graphs"]["vision"].update(file="llm_prefix.onnx")), "manifest.json graphs.vision describes another graph"),
    "recorded-io": (_manifest(lambda m: m["graphs"]["llm_suffix"]["outputs"][0].update(shape=["batch", 601])), "does not match manifest.json graphs.llm_suffix.outputs (logits)"),
    "grid": (_manifest(lambda m: m.update(num_patches=255)), "num_patches is 255 but grid [16, 16] has 256"),
    "image-token": (_manifest(lambda m: m["llm"].update(image_token_id=9999)), "token id 9999"),
    "preprocessing-key": (_manifest(lambda m: m["preprocessing"].update(crop=1)), "preprocessing.crop is unknown"),
    "std": (_manifest(lambda m: m["preprocessing"].update(std=[0.0, 1.0, 1.0])), "preprocessing.std [0.0, 1.0, 1.0] must be positive"),
    "profile": (_manifest(lambda m: m["engine_profiles"].pop("llm_prefix")), "engine_profiles.llm_prefix is missing"),
    "no-graph": (_manifest(lambda m: m["graphs"].pop("vision_plugin")), "graphs.vision_plugin is missing"),
    "opset": (_manifest(lambda m: m.update(opset=17)), "uses ONNX opset 18, but manifest.json says 17"),
    "swarm-self-weight": (_manifest(lambda m: m["budgets"].update(self_weight=False)), "SwarmAggregate node (grid [16, 16], distance 280.0"),
    "swarm-percentile": (_manifest(lambda m: m["budgets"].update(percentile=0.5)), "budgets.percentile 0.5, budgets.self_weight True)"),
    "swarm-graph-grid": (_graph("vision.plugin.onnx", lambda model: next(a for n in model.graph.node if n.op_type == "SwarmAggregate"
                                                                         for a in n.attribute if a.name == "grid").ints.__setitem__(0, 8)),
                         "vision.plugin.onnx's SwarmAggregate node (grid [8, 16]"),
}


@pytest.fixture
def broken(demo_export, tmp_path):
    def make(kind: str) -> Path:
        d = tmp_path / kind
        shutil.copytree(demo_export, d)
        BROKEN[kind][0](d)
        return d

    return make


VERBS = {
    "nuwa-run": (run_main, ["--prompt", "hi", "--max-new-tokens", "2"]),
    "nuwa-verify": (verify_main, ["--max-new-tokens", "2"]),
    "nuwa-profile": (profile_main, ["--runs", "1", "--warmup", "0", "--max-new-tokens", "2"]),
    "nuwa-build": (build_main, ["--builder", "tensorrt-rtx", "--precision", "fp32"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_every_verb_refuses_a_wrong_export_in_one_line(broken, kind, capsys):
    d = broken(kind)
    before = tree(d)
    for verb, (main, args) in VERBS.items():
        code = main([str(d), *args])
        out, err = capsys.readouterr()
        assert_one_line(verb, code, err, BROKEN[kind][1])
        assert out == "", (verb, out)
    assert tree(d) == before  # nothing written (no engines/, no partial output)


#: The real console scripts, each verb on a few of the broken exports above.
REAL = [
    ("nuwa-run", "garbage-embeddings"),
    ("nuwa-run", "image-size"),
    ("nuwa-verify", "truncated-graph"),
    ("nuwa-profile", "layers"),
    ("nuwa-build", "garbage-graph"),
    ("nuwa-build", "graph-unknown-op"),
]


@pytest.mark.parametrize("verb,kind", REAL)
def test_console_scripts_refuse_a_wrong_export_in_one_line(broken, verb, kind):
    d = broken(kind)
    before = tree(d)
    proc = subprocess.run([str(BIN / verb), str(d), *VERBS[verb][1]], capture_output=True, text=True, timeout=300)
    assert_one_line(verb, proc.returncode, proc.stderr, BROKEN[kind][1])
    assert proc.stdout == "" and tree(d) == before


@pytest.mark.parametrize(
    "edit,verbs,match",
    [
        (_graph("llm_suffix.ort.onnx", _one_input_matmul), ("nuwa-profile",), "ONNX Runtime cannot load"),  # what the ort backend runs
        (_graph("llm_suffix.ort.onnx", _bad_reshape), ("nuwa-run",), "ONNX Runtime failed running llm_suffix.ort.onnx"),
    ],
    ids=["session-creation", "run"],
)
def test_onnx_runtime_failures_are_one_line_naming_the_file(demo_export, tmp_path, edit, verbs, match):
    """Graphs the cheap checks pass but ONNX Runtime refuses (to load, or to run)."""
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    edit(d)
    for verb in verbs:
        proc = subprocess.run([str(BIN / verb), str(d), *VERBS[verb][1]], capture_output=True, text=True, timeout=300)
        assert_one_line(verb, proc.returncode, proc.stderr, match)
        assert "llm_suffix.ort.onnx" in proc.stderr


# --- output paths of nuwa-run, nuwa-profile, nuwa-build ---------------------------------------


def _paths(root: Path, suffix: str) -> dict[str, Path]:
    (root / "afile").write_text("a file\n")
    (root / f"adir{suffix}").mkdir()
    (root / f"target{suffix}").write_text("not to be touched")
    (root / f"link{suffix}").symlink_to(f"target{suffix}")
    return {
        "missing-dir": root / "missing" / f"out{suffix}",
        "under-a-file": root / "afile" / f"out{suffix}",
        "a-directory": root / f"adir{suffix}",
        "a-symlink": root / f"link{suffix}",
    }


PATH_ERRORS = {
    "missing-dir": "does not exist",
    "under-a-file": "afile is not a directory",
    "a-directory": "it is a directory",
    "a-symlink": "it is a symbolic link",
}


@pytest.mark.parametrize("case", sorted(PATH_ERRORS))
@pytest.mark.parametrize(
    "verb,flag",
    [("nuwa-run", "--show-tokens"), ("nuwa-run", "--draw"), ("nuwa-profile", "--plot"), ("nuwa-profile", "--json")],
)
def test_bad_output_file_is_one_line_before_any_work(demo_export, tmp_path, capsys, verb, flag, case):
    root = tmp_path / "work"
    root.mkdir()
    path = _paths(root, ".json" if flag == "--json" else ".png")[case]
    before = tree(root)
    main, args = VERBS[verb]
    extra = ["--ground", "the car"] if flag == "--draw" else []
    code = main([str(demo_export), *args, *extra, flag, str(path)])
    out, err = capsys.readouterr()
    assert_one_line(verb, code, err, PATH_ERRORS[case])
    assert str(path) in err and out == ""
    assert tree(root) == before


def test_json_report_never_replaces_a_special_file(demo_export, tmp_path, capsys):
    """A rename onto a FIFO (or, as root, onto /dev/null) would replace it with a regular file.
    A FIFO of our own stands in for the device here."""
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    assert profile_main([str(demo_export), *VERBS["nuwa-profile"][1], "--json", str(fifo)]) == 1
    assert_one_line("nuwa-profile", 1, capsys.readouterr().err, "it exists and is not a regular file")
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("verb,flag", [("nuwa-run", "--show-tokens"), ("nuwa-profile", "--json")])
def test_console_scripts_refuse_an_output_under_a_file(demo_export, tmp_path, verb, flag):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / ("out.json" if flag == "--json" else "out.png")
    proc = subprocess.run([str(BIN / verb), str(demo_export), *VERBS[verb][1], flag, str(target)], capture_output=True, text=True, timeout=300)
    assert_one_line(verb, proc.returncode, proc.stderr, "afile is not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_outputs_are_written_atomically_and_replace_old_files(demo_export, tmp_path):
    """A good run: --show-tokens and --json/--plot land complete, through temporary files of
    their own (a stale one left by a crashed run is neither used nor removed)."""
    shown, report, chart = tmp_path / "kept.png", tmp_path / "prof.json", tmp_path / "prof.png"
    for p in (shown, report, chart):
        p.write_text("old")
        (tmp_path / f".{p.name}.tmp").mkdir()  # stale, from an older version killed mid-write
    proc = subprocess.run(
        [str(BIN / "nuwa-run"), str(demo_export), "--prompt", "hi", "--max-new-tokens", "2", "--show-tokens", str(shown)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [str(BIN / "nuwa-profile"), str(demo_export), *VERBS["nuwa-profile"][1], "--json", str(report), "--plot", str(chart)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["schema_version"] == 2
    assert shown.read_bytes()[:4] == chart.read_bytes()[:4] == b"\x89PNG"
    stale = [f".{p.name}.tmp" for p in (shown, report, chart)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kept.png", "prof.json", "prof.png", *stale])


# --- nuwa-build and engines/ ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_build_never_replaces_engines_that_are_not_a_directory(demo_export, tmp_path, kind):
    """An engines/ that is a link is refused (never rmtree'd through), as is a file."""
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.plan").write_text("precious")
    if kind == "symlink":
        (d / "engines").symlink_to(elsewhere)
    else:
        (d / "engines").write_text("not a directory")
    before = tree(tmp_path)
    proc = subprocess.run([str(BIN / "nuwa-build"), str(d), *VERBS["nuwa-build"][1]], capture_output=True, text=True, timeout=300)
    match = "engines is a symbolic link" if kind == "symlink" else "engines exists and is not a directory"
    assert_one_line("nuwa-build", proc.returncode, proc.stderr, match)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("verb", ["nuwa-build", "nuwa-run"])
def test_outputs_in_a_read_only_place_are_one_line(demo_export, tmp_path, verb):
    """engines/ in a read-only export, --show-tokens in a read-only directory."""
    if verb == "nuwa-build":
        ro = tmp_path / "exp"
        shutil.copytree(demo_export, ro)
        argv = [str(BIN / verb), str(ro), *VERBS[verb][1]]
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        argv = [str(BIN / verb), str(demo_export), *VERBS[verb][1], "--show-tokens", str(ro / "kept.png")]
    before = tree(ro)
    argv = read_only_argv(ro, argv)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        ro.chmod(0o755)
    assert_one_line(verb, proc.returncode, proc.stderr, "is not writable")
    assert tree(ro) == before


AFTER_BUILD = """
import signal
import nuwa_export.build.builder as builder

_build = builder.build

def build(*args, **kwargs):
    result = _build(*args, **kwargs)  # engines/ is in place now
    signal.raise_signal(signal.SIGINT)
    return result

builder.build = build
"""


def test_ctrl_c_after_the_engines_are_in_place_restores_the_old_ones(demo_export, tmp_path):
    """SIGINT after the rename: exit 130, and engines/ is put back as it was (no .old entry)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    (d / "engines").mkdir()
    (d / "engines" / "previous.txt").write_text("the engines built before")
    before = tree(d)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(AFTER_BUILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([str(BIN / "nuwa-build"), str(d), *VERBS["nuwa-build"][1]], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == "nuwa-build: interrupted"
    assert "build llm_suffix" in proc.stderr  # it did build everything first
    assert tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "inject"]
