import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import edsr
from conftest import DATA
from edsr import CheckpointError, EdsrError, build_model, detect_config, load_model, save_model
from edsr.cli import main
from edsr.weights import REGISTRY, default_model, get_entry, read_checkpoint
from edsr.weights.convert import normalize_state_dict

SMALL = [("edsr-baseline", 2), ("edsr-baseline", 3), ("edsr-baseline", 4), ("mdsr-baseline", None)]


def _randomize(model):
    # Fresh init leaves the upsampler tiny; noisy weights make output comparisons meaningful.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return model.eval()


def _out(model, x, scale):
    with torch.no_grad():
        return model(x, scale)


def _basicsr_layout(sd, n_blocks):
    out = {}
    for k, v in sd.items():
        if k.startswith(("sub_mean", "add_mean")):
            continue
        parts = k.split(".")
        if k.startswith("head.0."):
            out["conv_first." + parts[-1]] = v
        elif k.startswith("body.") and parts[1] == str(n_blocks):
            out["conv_after_body." + parts[-1]] = v
        elif k.startswith("body."):
            out[f"body.{parts[1]}.conv{1 if parts[3] == '0' else 2}.{parts[-1]}"] = v
        elif k.startswith("tail.0."):
            out[f"upsample.{parts[2]}.{parts[-1]}"] = v
        elif k.startswith("tail.1."):
            out["conv_last." + parts[-1]] = v
    return out


@pytest.mark.parametrize("preset,scale", SMALL)
def test_every_layout_loads_with_identical_outputs(tmp_path, preset, scale):
    model = _randomize(build_model(preset, scale=scale))
    s = scale or 3
    x = torch.rand(1, 3, 9, 8) * 255
    ref = _out(model, x, s)
    sd = model.state_dict()
    layouts = {
        "bare.pt": sd,
        "state_dict.pth": {"state_dict": sd, "epoch": 3},
        "model.pt": {"model": sd},
        "params.pth": {"params": sd},
        "params_ema.pth": {
            "params_ema": sd,
            "params": {k: torch.zeros_like(v) for k, v in sd.items()},
        },
        "module.pt": {"module." + k: v for k, v in sd.items()},
        "compiled.pt": {"_orig_mod." + k: v for k, v in sd.items()},
        "ddp_compiled.pt": {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}},
    }
    if preset.startswith("edsr"):
        layouts["basicsr.pth"] = {"params": _basicsr_layout(sd, model.n_resblocks)}
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        loaded = load_model(tmp_path / name)
        assert loaded.config() == model.config(), name
        assert torch.equal(_out(loaded, x, s), ref), name
    ours = save_model(model, tmp_path / "ours.safetensors")
    loaded = load_model(ours)
    assert loaded.config() == model.config()
    assert torch.equal(_out(loaded, x, s), ref)


def test_basicsr_mean_is_rebuilt_exactly():
    model = _randomize(build_model("edsr-baseline", scale=2))
    sd = normalize_state_dict({"params": _basicsr_layout(model.state_dict(), 16)})
    for k in ("sub_mean.bias", "add_mean.bias", "sub_mean.weight"):
        assert torch.allclose(sd[k], model.state_dict()[k], atol=1e-5)


@pytest.mark.parametrize(
    "preset,scale,expected",
    [
        (
            "edsr-baseline",
            3,
            {"arch": "edsr", "scale": 3, "n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
        ),
        (
            "edsr",
            4,
            {"arch": "edsr", "scale": 4, "n_resblocks": 32, "n_feats": 256, "res_scale": 0.1},
        ),
        ("mdsr", None, {"arch": "mdsr", "scales": [2, 3, 4], "n_resblocks": 80, "n_feats": 64}),
    ],
)
def test_detect_config_from_shapes(preset, scale, expected):
    cfg = detect_config(build_model(preset, scale=scale).state_dict())
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["rgb_range"] == 255.0 and cfg["n_colors"] == 3


def test_detect_rgb_range_and_colors_and_res_scale_override(tmp_path):
    from edsr import EDSR

    m = EDSR(scale=2, n_resblocks=2, n_feats=8, n_colors=1, rgb_range=1.0)
    cfg = detect_config(m.state_dict())
    assert cfg["rgb_range"] == 1.0 and cfg["n_colors"] == 1 and cfg["n_resblocks"] == 2
    torch.save(m.state_dict(), tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt", res_scale=0.5).res_scale == 0.5


def test_res_scale_applies_to_mdsr_as_to_edsr(tmp_path, capsys):
    """MDSR's blocks scale their residual as EDSR's do (super-image's MDSR by 0.1), so
    --res-scale applies to it; the bundled MDSR used to ignore it without a word."""
    from edsr import MDSR

    bundled = load_model(device="cpu")
    scaled = load_model(res_scale=0.5, device="cpu")
    assert isinstance(scaled, MDSR) and scaled.res_scale == 0.5 and bundled.res_scale == 1.0
    x = torch.rand(1, 3, 12, 12) * 255
    assert (_out(scaled, x, 2) - _out(bundled, x, 2)).abs().max() > 1
    m = _randomize(MDSR(scales=(2,), n_resblocks=2, n_feats=8))
    torch.save(m.state_dict(), tmp_path / "m.pt")  # a file: from its shapes, and the flag
    assert load_model(tmp_path / "m.pt", res_scale=0.1).res_scale == 0.1
    img = tmp_path / "in.png"
    Image.open(DATA / "Set5/HR/bird.png").crop((0, 0, 24, 24)).save(img)
    for name, extra in (("plain.png", []), ("half.png", ["--res-scale", "0.5"])):
        assert main(["upscale", str(img), "-o", str(tmp_path / name), "--quiet", *extra]) == 0
    plain, half = (
        np.asarray(Image.open(tmp_path / n), dtype=int) for n in ("plain.png", "half.png")
    )
    assert np.abs(plain - half).max() > 1


def test_res_scale_is_stored_in_our_format(tmp_path):
    from edsr import EDSR

    m = EDSR(scale=2, n_resblocks=2, n_feats=8, res_scale=0.25)
    save_model(m, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").res_scale == 0.25
    # From shapes alone it cannot be known: the paper's convention (1.0 for this size) is used.
    torch.save(m.state_dict(), tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").res_scale == 1.0


def test_fp16_save_keeps_mean_shift_exact(tmp_path):
    model = _randomize(build_model("edsr-baseline", scale=2))
    path = save_model(model, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_model(path)
    assert torch.equal(loaded.sub_mean.bias, model.sub_mean.bias)
    x = torch.rand(1, 3, 8, 8) * 255
    assert (_out(loaded, x, 2) - _out(model, x, 2)).abs().max() < 0.5
    assert path.stat().st_size < 0.6 * 4 * sum(p.numel() for p in model.parameters())


def test_save_never_overwrites_without_asking(tmp_path):
    model = build_model("edsr-baseline", scale=2)
    path = save_model(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(Exception, match="exists; pass --overwrite"):
        save_model(_randomize(model), path)
    assert path.read_bytes() == before
    save_model(model, path, overwrite=True)
    assert list(tmp_path.iterdir()) == [path], "no temporary files left behind"


def test_strict_errors_name_keys(tmp_path):
    sd = build_model("edsr-baseline", scale=2).state_dict()
    missing = {k: v for k, v in sd.items() if not k.startswith("body.3.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing 4 key\(s\) \(body\.3\.body\.0\.bias"):
        load_model(tmp_path / "missing.pt")
    extra = dict(sd, **{"attention.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(
        CheckpointError, match="unexpected 1 key.*attention.weight.*not an EDSR/MDSR"
    ):
        load_model(tmp_path / "extra.pt")
    bad = dict(sd)
    bad["body.5.body.0.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape mismatch.*body.5.body.0.weight"):
        load_model(tmp_path / "shape.pt")


def test_wrong_scale_request_is_explained(tmp_path):
    torch.save(build_model("edsr-baseline", scale=4).state_dict(), tmp_path / "x4.pt")
    with pytest.raises(CheckpointError, match="x4 model; it cannot upscale x2"):
        load_model(tmp_path / "x4.pt", scale=2)


def test_non_edsr_and_garbage_files_are_refused(tmp_path):
    resnet_like = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}
    torch.save(resnet_like, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="not an EDSR/MDSR checkpoint"):
        load_model(tmp_path / "resnet.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="looks like text, not a model; --model takes"):
        load_model(tmp_path / "text.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    torch.save(build_model("edsr-baseline", scale=2).state_dict(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "truncated.pt")
    torch.save({"note": "no tensors here"}, tmp_path / "notensors.pt")
    with pytest.raises(CheckpointError, match="no model weights"):
        load_model(tmp_path / "notensors.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_needing_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"head.0.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="only arbitrary code could load"):
        load_model(path)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"model": Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="only arbitrary code could load"):
        load_model(tmp_path / "evil2.pt")


# --- issue 13 point 2: load_model() / load_model(NAME) / load_model(PATH), offline --------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("EDSR_OFFLINE", "1")
    monkeypatch.setenv("EDSR_HOME", str(tmp_path / "home"))  # an empty cache


def test_load_model_without_a_name_is_the_bundled_default_offline(offline):
    model = edsr.load_model()
    entry = get_entry(default_model())
    assert model.config() == entry.config() and not model.training
    by_name = edsr.load_model("mdsr-baseline-291")
    assert by_name.config() == model.config()
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_name.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_python_upscale_with_the_default_model_is_x4(offline):
    """The README's first Python lines, offline: a multi-scale model without a scale gives x4."""
    image = Image.open(DATA / "Set5" / "HR" / "bird.png").crop((100, 100, 140, 132))
    assert edsr.upscale(image, edsr.load_model()).size == (160, 128)


def test_readme_python_example_runs_offline_as_written(offline, tmp_path, monkeypatch):
    from conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    bird = Image.open(DATA / "Set5" / "HR" / "bird.png").convert("RGB")
    bird.crop((0, 0, 48, 40)).save(tmp_path / "photo.jpg", quality=85)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["big"].size == (192, 160)


def test_load_model_unknown_name_lists_the_names_in_one_line(offline):
    with pytest.raises(EdsrError) as info:
        edsr.load_model("mdsr-baseline-29")
    msg = str(info.value)
    assert "neither a file nor a known weights name" in msg and "\n" not in msg
    assert "did you mean mdsr-baseline-291" in msg and all(n in msg for n in REGISTRY)


def test_load_model_by_name_needs_the_network_or_the_cache(offline):
    with pytest.raises(EdsrError, match="EDSR_OFFLINE is set"):
        edsr.load_model("edsr-baseline-x2")


def test_load_model_takes_files_and_checks_the_device(tmp_path):
    path = save_model(build_model("edsr-baseline", scale=2), tmp_path / "m.safetensors")
    assert load_model(path).scales == (2,) and load_model(str(path), device="cpu").scales == (2,)
    with pytest.raises(EdsrError, match="unknown device 'gpu0'"):
        load_model(path, device="gpu0")


# --- issue 13 point 11: non-finite weights are refused at load -----------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_tensor_and_file(tmp_path, value, capsys):
    model = build_model("edsr-baseline", scale=2)
    with torch.no_grad():
        model.body[3].body[0].weight[0, 0, 1, 1] = value
    saved = save_model(model, tmp_path / "bad.safetensors")
    torch.save(model.state_dict(), tmp_path / "bad.pt")
    what = "NaN" if value != value else "infinite"
    for path in (saved, tmp_path / "bad.pt"):
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        msg = str(info.value)
        assert str(path) in msg and "body.3.body.0.weight" in msg and what in msg, msg
        assert "\n" not in msg
        with pytest.raises(CheckpointError, match="body.3.body.0.weight"):
            read_checkpoint(path)  # the one gate every loader (training's --init-from too) passes
    # The CLI reports it as one line and writes nothing.
    out = tmp_path / "out.png"
    code = main(
        [
            "upscale",
            str(DATA / "Set5/HR/bird.png"),
            "-o",
            str(out),
            "--model",
            str(saved),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and not out.exists() and err.count("\n") == 1
    assert "body.3.body.0.weight" in err and str(saved) in err
