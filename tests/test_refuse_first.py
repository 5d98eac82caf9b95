"""Refusals that need no model come before any model is loaded: `upscale` and `eval` say
"already exists", "does not exist" or "holds another job" in the time a start takes, not
after seconds of loading (or a download)."""

import pytest
from PIL import Image

import edsr.route
import edsr.weights
from conftest import DATA, crop_set
from edsr.cli import main
from edsr.errors import EdsrError


class Loaded(EdsrError):
    pass


@pytest.fixture
def no_loading(monkeypatch):
    """Every way the doors load a model (--model, the default route) fails loudly."""

    def loader(*a, **k):
        raise Loaded("a model was loaded")

    monkeypatch.setattr(edsr.weights, "load_model", loader)
    monkeypatch.setattr(edsr.route, "load_model", loader)


def _refused(argv, capsys, expected):
    err = _fails(argv, capsys)
    assert "a model was loaded" not in err and expected in err, err


def _fails(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    return err


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for n in ("bird", "baby"):
        Image.open(DATA / "Set5" / "HR" / f"{n}.png").crop((0, 0, 16, 12)).save(d / f"{n}.png")
    return d


@pytest.mark.parametrize(
    "model", [[], ["--model", "mdsr-baseline-291"], ["--model", "mdsr-baseline-291-jpeg"]]
)
def test_upscale_refuses_an_existing_output_before_loading(folder, tmp_path, capsys, no_loading,
                                                            model):  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "bird_x4.png").write_bytes(b"an earlier result")
    _refused(["upscale", folder, "-o", out, *model], capsys, "bird_x4.png already exists")
    (out / "bird_x2.png").write_bytes(b"an earlier result")
    _refused(["upscale", folder, "-o", out, "--scale", "2", *model], capsys, "already exists")


def test_upscale_refuses_a_missing_input_and_another_job_before_loading(
    folder, tmp_path, capsys, no_loading
):
    from edsr.inference.job import FolderJob, write_job
    from edsr.weights import get_entry

    _refused(["upscale", tmp_path / "nope", "-o", tmp_path / "o"], capsys, "no such file")
    out = tmp_path / "big"
    entry = get_entry("mdsr-baseline-291")
    write_job(out, FolderJob(model=entry.name, sha256=entry.sha256, scale=3, precision="auto"))
    _refused(["upscale", folder, "-o", out, "--scale", "4"], capsys, "holds a job run with")


def test_the_spy_sees_a_load(folder, tmp_path, capsys, no_loading):
    """The control: where nothing is refused, the doors do load (so the tests above can fail)."""
    assert "a model was loaded" in _fails(["upscale", folder, "-o", tmp_path / "new"], capsys)
    data = crop_set(tmp_path / "set", ("bird",), (0, 0, 48, 48))
    assert "a model was loaded" in _fails(["eval", "--data", data, "--scale", "2"], capsys)


def test_eval_refuses_existing_outputs_and_missing_data_before_loading(
    tmp_path, capsys, no_loading
):
    data = crop_set(tmp_path / "set", ("bird",), (0, 0, 48, 48))
    saved = tmp_path / "saved" / "set" / "x2" / "bird_x2.png"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"an earlier result")
    argv = ["eval", "--data", data, "--save-images", tmp_path / "saved"]
    _refused([*argv, "--scale", "2"], capsys, "bird_x2.png already exists")
    _refused(argv, capsys, "bird_x2.png already exists")  # the default model's scales: 2 3 4
    _refused([*argv, "--model", "mdsr-baseline-291"], capsys, "already exists")
    (tmp_path / "r.json").write_text("{}")
    _refused(["eval", "--data", data, "--json", tmp_path / "r.json"], capsys, "already exists")
    _refused(["eval", "--data", tmp_path / "nope"], capsys, "nope")
