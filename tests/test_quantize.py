"""int8 inference (edsr.inference.quantize) and what ``auto`` picks (edsr.inference.precision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edsr
from edsr.cli import main
from edsr.errors import EdsrError
from edsr.evaluate import discover, load_pair, super_resolve
from edsr.inference import calibration as C
from edsr.inference import precision as P
from edsr.inference import quantize as Q
from edsr.inference.onnx_graph import float_graph
from edsr.models import MDSR
from sr_helpers import trained_small_mdsr

SET5 = Path(__file__).parent / "data" / "Set5"
ort = pytest.importorskip(
    "onnxruntime", reason="int8 needs onnxruntime: pip install 'edsr[export]'"
)


@pytest.fixture(scope="module")
def small() -> MDSR:
    """See sr_helpers.trained_small_mdsr."""
    return trained_small_mdsr()


@pytest.fixture()
def home(edsr_home: Path) -> Path:
    return edsr_home


def _flags(monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))


def test_int8_close_to_fp32_on_set5(small: MDSR, home: Path) -> None:
    # Calibrated on Set5 HR crops, checked on the LR images of all of Set5 at x2.
    engine = Q.int8_engine(small, calibrate_on=SET5)
    q = P.Int8Model(small.fold_res_scale().eval(), engine)
    fp = P.prepare_model(small, precision="fp32")
    ds = discover(SET5)
    diffs = []
    for hr in ds.hr_files:
        lr, _ = load_pair(ds, hr, 2)
        a, b = super_resolve(fp, lr, 2).int(), super_resolve(q, lr, 2).int()
        diffs.append((a - b).abs().flatten().numpy())
    d = np.concatenate(diffs)
    # int8 stays within a few gray levels, and is not bit-exact (it is really int8).
    assert np.percentile(d, 99.9) <= 2
    assert 0 < d.mean() < 0.5


def test_image_facing_layers_stay_float(small: MDSR, home: Path) -> None:
    calib = C.calibrate(small, SET5, save=False)
    graph = Q.quantized_graph(small, 2, calib)
    made_by = {o: n for n in graph.graph.node for o in n.output}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    kept = set(Q.float_nodes(float_graph(small, 2)))
    assert len(kept) == 4 and {n.name for n in convs} >= kept
    for node in convs:
        weight_from = made_by.get(node.input[1])
        quantized = weight_from is not None and weight_from.op_type == "DequantizeLinear"
        assert quantized == (node.name not in kept), node.name


def test_residual_stream_stays_float(small: MDSR, home: Path) -> None:
    # Every sum reads the stream itself and the dequantized output of an int8 conv; the
    # stream reaches each int8 conv through its own Q/DQ pair.
    calib = C.calibrate(small, SET5, save=False)
    graph = Q.quantized_graph(small, 2, calib)
    made_by = {o: n for n in graph.graph.node for o in n.output}
    kept = set(Q.float_nodes(float_graph(small, 2)))
    adds = [n for n in graph.graph.node if n.op_type == "Add"]
    assert len(adds) == 2 + 2 + 1  # pre-process blocks, body blocks, the global sum
    for add in adds:
        kinds = sorted(made_by[t].op_type for t in add.input)
        assert kinds in (["Add", "DequantizeLinear"], ["Conv", "DequantizeLinear"]), add.name
        for t in add.input:
            maker = made_by[t]
            if maker.op_type == "Conv":
                assert maker.name in kept  # the float head, never an int8 conv's raw output
            if maker.op_type == "DequantizeLinear":
                q = made_by[maker.input[0]]
                assert made_by[q.input[0]].op_type == "Conv"  # an int8 conv's output
    stream = {t for add in adds for t in add.input if made_by[t].op_type != "DequantizeLinear"}
    for t in stream:
        readers = [n for n in graph.graph.node if t in n.input]
        assert {n.op_type for n in readers} == {"Add", "QuantizeLinear"}, t


def test_calibration_is_stored_and_reused(
    small: MDSR, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(EdsrError, match="--calibrate"):
        Q.int8_engine(small)  # nothing stored yet, nothing to calibrate on
    Q.int8_engine(small, calibrate_on=SET5)
    digest = C.weights_digest(small)
    assert (C.cache_dir(digest) / f"{C.METHOD}.json").is_file()

    def no_calibration(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibrated again")

    monkeypatch.setattr(C, "_measure_ranges", no_calibration)
    fast = P.prepare_model(small, precision="int8")
    assert isinstance(fast, P.Int8Model) and fast.precision == "int8"
    x = torch.rand(1, 3, 20, 24) * 255
    assert fast(x, 2).shape == (1, 3, 40, 48)
    calib = C.find_calibration(small)
    assert calib is not None
    graph = f"{C.METHOD}-{Q.LAYOUT}-{calib.fingerprint()}-x2.onnx"
    assert (C.cache_dir(digest) / graph).is_file()


def test_stream_factors_even_out_the_stream(small: MDSR) -> None:
    # Measured on real crops: after rescaling, the spread of the stream's per-channel peaks
    # is the square root of what it was (alpha 0.5), and the model's output is unchanged.
    crops = C.calibration_crops(SET5, 2, 3, limit=16)
    factors = torch.tensor(C.stream_factors(small, 2, crops))
    assert factors.log().mean().abs() < 1e-5

    def run(model: MDSR) -> tuple[float, torch.Tensor]:
        peak = C.stream_peaks(model, 2, crops)
        with torch.no_grad():
            out = model(torch.from_numpy(crops), 2)
        return float(peak.max() / peak.min()), out

    before, y = run(small)
    after, y2 = run(small.rescale_stream(factors, 2))
    assert before > 1.5
    assert after == pytest.approx(before**0.5, rel=1e-3)
    assert (y2 - y).abs().max() < 1e-2


def test_split_calibration_keeps_extremes_around_relus_and_shuffles(small: MDSR) -> None:
    runs = {m: C.calibrate(small, SET5, method=m, save=False) for m in ("split-99.9", "minmax")}
    runs["percentile"] = C.calibrate(small, SET5, method="percentile-99.9", save=False)
    split, extremes, clipped = (runs[k].ranges[2] for k in ("split-99.9", "minmax", "percentile"))
    graph = float_graph(runs["minmax"].prepared(small, 2), 2)
    wide = C.split_tensors(graph)
    relus = [n for n in graph.graph.node if n.op_type == "Relu"]
    assert len(relus) == 4 and {r.output[0] for r in relus} <= wide
    assert wide < set(split)
    for k, v in split.items():
        assert v == (extremes[k] if k in wide else clipped[k]), k
    # The choice matters: a percentile clips some of those activations.
    assert any(extremes[k][1] > clipped[k][1] * 1.01 for k in wide)


def test_calibration_json_round_trip(small: MDSR, home: Path) -> None:
    calib = C.calibrate(small, SET5, save=False)
    assert set(calib.stream) == {2} and len(calib.stream[2]) == small.n_feats
    again = C.Calibration.from_json(calib.to_json())
    assert again == calib and again.fingerprint() == calib.fingerprint()
    # The graph is built from the rescaled model its ranges were measured on.
    prepared = calib.prepared(small, 2)
    assert not torch.equal(prepared.head[0].weight, small.head[0].weight)
    older = C.Calibration(calib.digest, calib.method, calib.source, calib.ranges)
    assert older.prepared(small, 2) is small and older.fingerprint() != calib.fingerprint()


@pytest.mark.parametrize(
    ("flags", "meets", "want"),
    [
        (("avx2", "avx512_vnni", "avx512_bf16"), True, torch.bfloat16),  # bf16 is faster
        (("avx2", "avx512_vnni", "avx512_bf16"), False, torch.bfloat16),
        (("avx2", "amx_int8", "amx_bf16"), True, torch.bfloat16),
        (("avx2", "avx512_vnni"), True, torch.qint8),
        (("avx2", "avx512_vnni"), False, torch.float32),
        (("avx2", "avx_vnni"), True, torch.qint8),
        (("avx2", "avx_vnni"), False, torch.float32),
        (("avx2", "avx512_bf16"), True, torch.bfloat16),  # no int8 dot product: never int8
        (("avx2",), True, torch.float32),
    ],
)
def test_auto_rule(
    monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], meets: bool, want: torch.dtype
) -> None:
    _flags(monkeypatch, *flags)
    assert P.resolve_precision("auto", "cpu", int8=meets) == want


def test_int8_only_for_inference_on_cpu() -> None:
    with pytest.raises(EdsrError, match="inference"):
        P.resolve_precision("int8", "cpu")  # training asks without int8=
    with pytest.raises(EdsrError, match="CPU"):
        P.resolve_precision("int8", "cuda", int8=False)
    assert P.resolve_precision("int8", "cpu", int8=False) == torch.qint8


def test_bundled_model_auto_follows_its_record(monkeypatch: pytest.MonkeyPatch) -> None:
    model = edsr.load_model()
    calib = C.find_calibration(model)
    assert calib is not None and calib.source.startswith("train")  # never its test images
    _flags(monkeypatch, "avx2", "avx512_vnni")  # int8 dot products, no native bf16
    want = "int8" if calib.meets_bar() else "fp32"
    assert P.chosen_precision(model, "auto", "cpu") == want
    _flags(monkeypatch, "avx2", "avx512_vnni", "avx512_bf16")
    assert P.chosen_precision(model, "auto", "cpu") == "bf16"
    _flags(monkeypatch, "avx2")
    assert P.chosen_precision(model, "auto", "cpu") == "fp32"


def test_cli_int8_end_to_end(
    small: MDSR, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edsr.weights import save_model

    ckpt = tmp_path / "small.safetensors"
    save_model(small, ckpt)
    out = tmp_path / "small-int8.onnx"
    argv = ["export", str(ckpt), "--format", "onnx", "--precision", "int8"]
    assert main([*argv, "--calibrate", str(SET5), "-o", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert "DequantizeLinear" in ops
    x = np.random.default_rng(0).random((1, 3, 17, 21), dtype=np.float32) * 255
    assert session.run(None, {"input": x})[0].shape == (1, 3, 34, 42)
    capsys.readouterr()
    # eval reuses the stored calibration: no --calibrate needed any more
    assert main(["eval", "--model", str(ckpt), "--data", str(SET5), "--scale", "2"]) == 0
    fp32 = float(capsys.readouterr().out.splitlines()[1].split()[2])
    args = ["eval", "--model", str(ckpt), "--data", str(SET5), "--scale", "2"]
    assert main([*args, "--precision", "int8", "--quiet"]) == 0
    int8 = float(capsys.readouterr().out.splitlines()[1].split()[2])
    assert 0 < fp32 - int8 < 0.3 and fp32 > 30
