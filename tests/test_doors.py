"""One engine behind every door: the CLI, the Python API, the server and the demo give the same
answer to the same request, and read what an option left out means from one place."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edsr
from conftest import DATA, crop_set
from edsr import defaults
from edsr.cli import main
from edsr.datasets import find_data
from edsr.demo import run_demo, upscale_sample
from edsr.errors import EdsrError
from edsr.inference import describe, precision
from edsr.inference.precision import InferenceModel, chosen_precision, compute_model
from edsr.models import build_model, count_parameters
from edsr.weights import registry

pytest.importorskip("fastapi", reason="needs the 'serve' extra (fastapi)")
pytest.importorskip("httpx", reason="needs httpx (test extra)")
from fastapi.testclient import TestClient  # noqa: E402

from edsr.serve import ServeConfig, create_app, load_models  # noqa: E402


@pytest.fixture
def lr_png(tmp_path):
    """A real photo's crop, small enough for four runs of the bundled MDSR."""
    path = tmp_path / "lr.png"
    Image.open(DATA / "Set5" / "HR" / "baby.png").convert("RGB").crop((200, 120, 236, 152)).save(
        path
    )
    return path


def _cli(lr_png, out, capsys, *extra):
    code = main(["upscale", str(lr_png), "-o", str(out), "--quiet", *extra])
    _, err = capsys.readouterr()
    assert code == 0, err
    (written,) = out.glob("*.png")
    return written.name, np.asarray(Image.open(written))


def _server(lr_png, tmp_path):
    """POST /v1/upscale with no option but the image; the server's answer and /v1/models."""
    app = create_app(load_models([], progress=False), ServeConfig(tmp_dir=str(tmp_path)))
    with TestClient(app) as client:
        files = {"image": ("lr.png", lr_png.read_bytes(), "image/png")}
        r = client.post("/v1/upscale", files=files)
        assert r.status_code == 200, r.text
        listing = client.get("/v1/models").json()
    return int(r.headers["x-scale"]), np.asarray(Image.open(io.BytesIO(r.content))), listing


def _demo_engine(lr_png):
    lr = torch.from_numpy(np.array(Image.open(lr_png))).permute(2, 0, 1)
    return upscale_sample(edsr.load_model(), lr).permute(1, 2, 0).numpy()


def test_one_image_through_the_four_doors_gives_one_answer(lr_png, tmp_path, capsys, edsr_home):
    name, cli = _cli(lr_png, tmp_path / "cli", capsys)
    model = edsr.load_model()
    python = np.asarray(edsr.upscale(Image.open(lr_png), model))  # the README's two lines
    scale, server, listing = _server(lr_png, tmp_path)
    demo = _demo_engine(lr_png)

    assert name == "lr_x4.png" and scale == 4
    assert cli.shape == python.shape == server.shape == demo.shape == (128, 144, 3)
    for other in (python, server, demo):
        assert np.abs(other.astype(int) - cli.astype(int)).max() <= 1
    # the same compute path everywhere: what `auto` is on this machine, not plain fp32
    path = chosen_precision(model, "auto")
    assert describe(compute_model(model)).precision == path
    (served,) = [m for m in listing["models"] if m["id"] == listing["default"]]
    assert served["precision"] == path and served["default_scale"] == 4
    # load_model still gives the trainable module; the fast copy is kept beside it
    assert not isinstance(model, InferenceModel) and model.training is False
    assert all(p.requires_grad for p in model.body.parameters())


def test_every_door_reads_the_defaults_from_one_place(
    lr_png, tmp_path, capsys, monkeypatch, edsr_home
):
    prepared_for: list[str] = []
    prepare = precision.prepare_model

    def spy(model, **kw):
        prepared_for.append(kw["precision"])
        return prepare(model, **kw)

    monkeypatch.setattr(precision, "prepare_model", spy)
    monkeypatch.setattr(defaults, "SCALE", 2)
    monkeypatch.setattr(defaults, "PRECISION", "fp32")

    name, cli = _cli(lr_png, tmp_path / "cli", capsys)
    python = edsr.upscale(Image.open(lr_png), edsr.load_model())
    scale, server, listing = _server(lr_png, tmp_path)
    demo = _demo_engine(lr_png)
    samples = crop_set(tmp_path / "samples", ("bird",), (100, 100, 148, 148))
    results = run_demo(edsr.load_model(), tmp_path / "demo", samples=samples)

    assert name == "lr_x2.png" and scale == 2 and {r.scale for r in results} == {2}
    assert cli.shape == server.shape == demo.shape == (64, 72, 3) and python.size == (72, 64)
    (served,) = [m for m in listing["models"] if m["id"] == listing["default"]]
    assert (served["default_scale"], served["precision"]) == (2, "fp32")
    # CLI, Python, server, demo engine, demo: each prepared its model for the changed default
    assert len(prepared_for) >= 5 and set(prepared_for) == {"fp32"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the device default on a CPU host")
def test_the_device_default_is_read_by_every_door(lr_png, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(defaults, "DEVICE", "cuda")
    code = main(["upscale", str(lr_png), "-o", str(tmp_path / "o"), "--quiet"])
    assert code == 1 and "no CUDA GPU" in capsys.readouterr().err
    for door in (edsr.load_model, lambda: load_models([], progress=False)):
        with pytest.raises(EdsrError, match="no CUDA GPU"):
            door()
    monkeypatch.setattr(defaults, "DEVICE", "cpu")
    assert describe(edsr.load_model()).device.type == "cpu"


def test_prepared_copy_follows_fine_tuning_device_and_mode():
    torch.manual_seed(0)
    model = build_model("edsr-baseline", scale=2).eval()
    x = np.array(Image.open(DATA / "Set5" / "HR" / "bird.png").convert("RGB"))[:24, :24]
    first = compute_model(model)
    assert compute_model(model) is first  # prepared once
    before = edsr.upscale(x, model)
    # one fine-tuning step (in place, as optimizers do): the next upscale sees the new weights
    opt = torch.optim.SGD([model.tail[-1].bias], lr=30.0)
    (-model(torch.rand(1, 3, 8, 8) * 255, 2).mean()).backward()
    opt.step()
    fresh = compute_model(model)
    assert fresh is not first
    after = edsr.upscale(x, model)
    plain = edsr.upscale(x, model, precision="fp32")
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(2, 0, 1)[None].float(), 2)[0]
    ref = ref.clamp(0, 255).round().permute(1, 2, 0).numpy()
    assert np.abs(plain.astype(int) - ref).max() <= 1
    assert np.abs(after.astype(int) - ref).max() <= 1 < np.abs(before.astype(int) - ref).max()
    model.train()
    assert compute_model(model) is not fresh  # mode is part of what the copy depends on
    assert compute_model(model, "fp32").precision == "fp32"
    assert compute_model(first) is first  # a prepared model runs as it is
    with pytest.raises(ValueError, match="prepared for"):
        compute_model(compute_model(model, "fp32"), "int8")


def test_parameter_count_has_one_definition(tmp_path):
    entry = registry.get_entry(registry.default_model())
    model = edsr.load_model()
    n = count_parameters(model)
    assert n == entry.parameters == describe(model).parameters == 3_227_203
    # the mean shifts are constants: frozen or not, prepared or not, the count is the same
    assert count_parameters(model, trainable_only=False) == n + 24
    assert describe(compute_model(model)).parameters == n
    listing = _server_listing(tmp_path)
    (served,) = [m for m in listing if m["id"] == entry.name]
    assert served["parameters"] == n and served["scales"] == [2, 3, 4]


def _server_listing(tmp_path):
    app = create_app(load_models([], progress=False), ServeConfig(tmp_dir=str(tmp_path)))
    with TestClient(app) as client:
        return client.get("/v1/models").json()["models"]


def test_inputs_are_checked_before_any_download(tmp_path, capsys, monkeypatch, edsr_home):
    from edsr.weights import download

    touched = []

    def no_network(*args, **kwargs):
        touched.append(args)
        raise RuntimeError("the network was touched")

    monkeypatch.setattr(download, "fetch_url", no_network)
    missing = tmp_path / "missing.png"
    code = main(["upscale", str(missing), "-o", str(tmp_path / "o"), "--model", "edsr-baseline-x2"])
    err = capsys.readouterr().err
    assert code == 1 and "missing.png: no such file" in err and err.count("\n") == 1
    assert touched == []
    # the same command with an existing input does go to the network (the check above can fail)
    Image.new("RGB", (8, 8)).save(missing)
    main(["upscale", str(missing), "-o", str(tmp_path / "o"), "--model", "edsr-baseline-x2"])
    assert touched and "network was touched" in capsys.readouterr().err


def test_a_data_set_name_finds_the_folder_then_the_data_cache(
    tmp_path, capsys, monkeypatch, edsr_home
):
    monkeypatch.chdir(tmp_path)
    cmd = ["eval", "--model", "bicubic", "--data", "set5", "--scale", "2", "--quiet"]  # any case
    # neither here nor in the cache: one line naming the command that fetches it
    assert main(cmd) == 1
    err = capsys.readouterr().err
    assert "edsr data download Set5" in err and err.count("\n") == 1
    with pytest.raises(EdsrError, match="edsr data download Set5"):
        find_data("Set5")
    # in the data cache, where `edsr data download Set5` puts it
    box = (0, 0, 64, 64)
    cached = crop_set(edsr_home / "data" / "Set5", ("baby", "bird"), box)
    assert find_data("Set5") == cached
    assert main(cmd) == 0
    assert re.search(r"Set5\s+x2\s+\S+\s+\S+\s+2\s", capsys.readouterr().out)  # 2 images
    # training reads names through the same resolver, and records the folder it found
    from edsr.training import loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: seen.append(cfg))
    train = ["train", "--preset", "edsr-baseline", "--scale", "2", "--out", str(tmp_path / "r")]
    assert main([*train, "--train", "Set5", "--val", "set5"]) == 0
    assert seen[0].train == [str(cached)] and seen[0].val == str(cached)
    # ./Set5 wins over the cache
    crop_set(tmp_path / "Set5", ("bird",), box)
    assert find_data("Set5") == Path("Set5")
    assert main([*cmd[:4], "Set5", *cmd[5:]]) == 0
    assert re.search(r"Set5\s+x2\s+\S+\s+\S+\s+1\s", capsys.readouterr().out)  # 1 image
    # a name the catalogue does not know stays a path, for the reader to report
    assert find_data("my_photos") == Path("my_photos")
