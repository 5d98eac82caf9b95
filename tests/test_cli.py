"""The command line as a user runs it: real files in, real files out, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA, crop_set
from edsr import build_model, save_model
from edsr.cli import main


@pytest.fixture(scope="module")
def x2_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "edsr_baseline_x2.safetensors"
    save_model(build_model("edsr-baseline", scale=2), path)
    return path


@pytest.fixture(scope="module")
def mdsr_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mdsr.pt"
    torch.save(build_model("mdsr-baseline").state_dict(), path)
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_upscale_rgb_file_as_a_user_would(tmp_path, x2_model):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edsr",
            "upscale",
            DATA / "Set5/HR/bird.png",
            "-o",
            out,
            "--model",
            x2_model,
            "--scale",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    img = Image.open(out / "bird_x2.png")
    assert img.size == (576, 576) and img.mode == "RGB"


def test_upscale_modes_and_no_overwrite(tmp_path, x2_model, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.open(DATA / "Set14/HR/bridge.png").crop((0, 0, 40, 30)).save(src / "gray.png")
    Image.new("RGBA", (20, 10), (10, 200, 30, 128)).save(src / "sub" / "alpha.png")
    Image.fromarray(np.arange(300, dtype=np.uint16).reshape(15, 20) * 200).save(src / "deep.png")
    Image.new("RGB", (9, 7), (1, 2, 3)).save(src / "photo.jpg", quality=95)
    out = tmp_path / "out"
    code, stdout, err = run(["upscale", src, "-o", out, "--model", x2_model, "--quiet"], capsys)
    assert code == 0, err
    gray = Image.open(out / "gray_x2.png")
    assert gray.mode == "L" and gray.size == (80, 60)
    alpha = Image.open(out / "sub" / "alpha_x2.png")
    assert alpha.mode == "RGBA" and alpha.size == (40, 20)
    assert np.asarray(alpha)[:, :, 3].min() == 128
    deep = np.asarray(Image.open(out / "deep_x2.png"))
    assert deep.dtype.itemsize == 2 and deep.shape == (30, 40) and deep.max() > 255
    assert Image.open(out / "photo_x2.png").size == (18, 14)
    before = (out / "gray_x2.png").read_bytes()
    code, _, err = run(["upscale", src, "-o", out, "--model", x2_model, "--quiet"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "and 3 more outputs already exist; pass --skip-existing to leave them" in err
    assert "or --overwrite to redo them" in err
    assert (out / "gray_x2.png").read_bytes() == before
    code, _, err = run(
        ["upscale", src, "-o", out, "--model", x2_model, "--quiet", "--overwrite"], capsys
    )
    assert code == 0, err
    assert not list(out.rglob("*.tmp"))


def test_single_output_file_name(tmp_path, mdsr_model, capsys):
    dst = tmp_path / "big.png"
    code, _, err = run(
        [
            "upscale",
            DATA / "Set5/HR/butterfly.png",
            "-o",
            dst,
            "--model",
            mdsr_model,
            "--scale",
            "3",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert Image.open(dst).size == (768, 768)


def _bad_inputs(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    good = (DATA / "Set5/HR/bird.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])
    (tmp_path / "zero.png").write_bytes(b"")
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "resnet.pt")
    return tmp_path


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "no such file"),
        ("empty_dir", "no images"),
        ("notes.png", "notes.png"),
        ("truncated.png", "truncated.png"),
        ("zero.png", "zero.png"),
        ("scale", "x2 model; it cannot upscale x3"),
        ("checkpoint", "not an EDSR/MDSR checkpoint"),
        ("no_checkpoint", "does not exist"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, x2_model, capsys, case, expected):
    d = _bad_inputs(tmp_path)
    inp, model, extra = d / case, x2_model, []
    if case == "missing":
        inp = d / "nothing_here.png"
    elif case == "scale":
        inp, extra = DATA / "Set5/HR/bird.png", ["--scale", "3"]
    elif case == "checkpoint":
        inp, model = DATA / "Set5/HR/bird.png", d / "resnet.pt"
    elif case == "no_checkpoint":
        inp, model = DATA / "Set5/HR/bird.png", d / "nope.pt"
    code, _, err = run(
        ["upscale", inp, "-o", d / "out", "--model", model, "--quiet", *extra], capsys
    )
    assert code != 0
    assert expected in err
    assert err.startswith("edsr: error: ") and err.count("\n") == 1, err
    assert not (d / "out").exists() or not any((d / "out").rglob("*"))


def test_decompression_bomb_message(tmp_path, x2_model, capsys, monkeypatch):
    monkeypatch.setenv("EDSR_MAX_IMAGE_PIXELS", "1000")
    code, _, err = run(
        ["upscale", DATA / "Set5/HR/bird.png", "-o", tmp_path, "--model", x2_model, "--quiet"],
        capsys,
    )
    assert code == 1 and "EDSR_MAX_IMAGE_PIXELS" in err and err.count("\n") == 1


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["upscale", "x.png", "-o", "out", "--model", "m.pt", "--scale", "-2"])
    assert e.value.code == 2
    assert "positive" in capsys.readouterr().err


def test_eval_bicubic_json(tmp_path, capsys):
    dst = tmp_path / "r.json"
    code, out, err = run(
        [
            "eval",
            "--model",
            "bicubic",
            "--data",
            DATA / "Set5",
            "--scale",
            "2",
            "4",
            "--json",
            dst,
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(dst.read_text())
    cells = {(r["dataset"], r["scale"]): r for r in report["results"]}
    assert set(cells) == {("Set5", 2), ("Set5", 4)}
    assert abs(cells["Set5", 2]["psnr"] - 33.66) < 0.03 and cells["Set5", 2]["images"] == 5
    assert len(cells["Set5", 4]["per_image"]) == 5
    assert "Set5" in out and "Y, shave 2" in out


def test_eval_mdsr_every_scale_and_save_images(tmp_path, mdsr_model, capsys):
    code, out, err = run(
        [
            "eval",
            "--model",
            mdsr_model,
            "--data",
            DATA / "Set5",
            "--scale",
            "2",
            "3",
            "4",
            "--save-images",
            tmp_path,
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    for s in (2, 3, 4):
        saved = Image.open(tmp_path / "Set5" / f"x{s}" / f"bird_x{s}.png")
        assert saved.size == (288 // s * s, 288 // s * s)


def test_eval_errors(tmp_path, x2_model, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        ["eval", "--model", "bicubic", "--data", tmp_path / "empty", "--scale", "2"], capsys
    )
    assert code == 1 and "no images" in err
    code, _, err = run(
        ["eval", "--model", "bicubic", "--data", tmp_path / "missing", "--scale", "2"], capsys
    )
    assert code == 1 and "does not exist" in err
    code, _, err = run(
        ["eval", "--model", x2_model, "--data", DATA / "Set5", "--scale", "4"], capsys
    )
    assert code == 1 and "cannot be evaluated at x4" in err
    bench = tmp_path / "Bench"
    (bench / "HR").mkdir(parents=True)
    (bench / "LR_bicubic" / "X2").mkdir(parents=True)
    Image.new("RGB", (20, 16)).save(bench / "HR" / "a.png")
    Image.new("RGB", (9, 8)).save(bench / "LR_bicubic" / "X2" / "ax2.png")
    code, _, err = run(
        ["eval", "--model", "bicubic", "--data", bench, "--scale", "2", "--quiet"], capsys
    )
    assert code == 1 and "ax2.png is 9x8" in err and "needs 10x8" in err


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Two real Set5 crops, small enough for 8 forward passes per image in a unit test."""
    return crop_set(tmp_path_factory.mktemp("crops"), ("bird", "butterfly"), (40, 40, 112, 112))


def test_eval_self_ensemble_is_the_mean_of_eight_transforms(crops, x2_model):
    from edsr.evaluate import discover, evaluate, load_pair
    from edsr.inference import ensemble_forward
    from edsr.inference.precision import prepare_model
    from edsr.metrics import psnr
    from edsr.weights import load_model

    model = load_model(x2_model, device="cpu")
    plain = evaluate(model, [crops], [2], progress=False)
    plus = evaluate(model, [crops], [2], ensemble=True, progress=False)
    assert plus["self_ensemble"] and plus["results"][0]["self_ensemble"]
    evalset = discover(crops)
    fast = prepare_model(model, precision="fp32")  # what evaluate runs: fp32, channels-last
    for row, hr_path in zip(plus["results"][0]["per_image"], evalset.hr_files, strict=True):
        lr, hr = load_pair(evalset, hr_path, 2)
        sr = ensemble_forward(fast, lr[None].float(), 2)[0].clamp(0, 255).round().to(torch.uint8)
        assert row["psnr"] == pytest.approx(
            float(psnr(sr, hr, crop_border=2, y_channel=True)[0]), abs=1e-9
        )
    # An untrained model's 8 outputs differ, so their mean is a different picture.
    assert plus["results"][0]["psnr"] != plain["results"][0]["psnr"]


def test_eval_self_ensemble_flag_and_its_errors(crops, x2_model, capsys, tmp_path):
    code, out, _ = run(
        [
            "eval",
            "--model",
            x2_model,
            "--data",
            crops,
            "--scale",
            "2",
            "--ensemble",  # one name with upscale, Python and the server
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and " x2+ " in out
    # the old spelling still works (hidden from --help)
    code, _, err = run(
        ["eval", "--model", "bicubic", "--data", crops, "--scale", "2", "--self-ensemble"], capsys
    )
    assert code == 1 and "bicubic has no ensemble" in err and err.count("\n") == 1


def test_without_model_the_bundled_default_is_used(crops, capsys, tmp_path):
    from edsr.weights import default_model, get_entry

    entry = get_entry(default_model())
    assert entry.bundled and entry.arch == "mdsr"
    code, out, _ = run(["eval", "--data", crops, "--scale", "4", "--quiet"], capsys)
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[1] == "x4" and 10 < float(row[2]) < 60
    dst = tmp_path / "bird_x3.png"
    code, _, err = run(
        ["upscale", crops / "HR" / "bird.png", "-o", dst, "--scale", "3", "--quiet"], capsys
    )
    assert code == 0, err
    assert Image.open(dst).size == (216, 216)


def test_readme_keeps_two_setup_commands_and_ci_runs_the_second():
    from conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in setup.split("```bash\n")[1:]]
    commands = [[ln for ln in b.splitlines() if ln and not ln.startswith("#")] for b in blocks]
    assert [len(c) for c in commands] == [1, 1]
    assert commands[0][0].endswith("pip install torch==2.13.0 -e . && edsr demo")
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1][0].endswith(ci)


def test_a_reader_that_goes_away_ends_the_command_quietly(monkeypatch, capsys):
    """`edsr weights list | head -3`: the closed pipe is not an 'internal error'."""
    import os

    r, w = os.pipe()
    os.close(r)
    stdout = os.fdopen(w, "w", buffering=1)  # line-buffered: the first line meets the closed pipe
    monkeypatch.setattr(sys, "stdout", stdout)
    code = main(["weights", "list"])
    stdout.close()  # main pointed the descriptor at /dev/null, so what is left flushes there
    assert code == 141
    assert "internal error" not in capsys.readouterr().err


def test_a_warning_is_one_line_for_the_user(tmp_path, x2_model, capsys):
    # An animated GIF gives its first frame and one warning line, not Python's file:line form.
    frames = [Image.new("RGB", (16, 12), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code, _, err = run(
        ["upscale", tmp_path / "anim.gif", "-o", tmp_path / "out", "--model", x2_model, "--quiet"],
        capsys,
    )
    assert code == 0 and Image.open(tmp_path / "out" / "anim_x2.png").size == (32, 24)
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert lines == [
        "edsr: warning: " + f"{tmp_path / 'anim.gif'}: animated GIF with 3 frames; using the first"
    ]


def test_help_shows_the_real_defaults_and_that_names_work(capsys):
    # Issue 13.3: the defaults a run really gets, from TrainConfig, not an empty help.
    from edsr.training.config import TrainConfig

    d = TrainConfig()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"total iterations (default {d.iters})" in text
    assert f"save a checkpoint every N iterations (default {d.checkpoint_every})" in text
    assert f"validate every N iterations (default {d.val_every})" in text
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "or a name from 'edsr weights list'" in text


@pytest.mark.slow
def test_sigterm_during_upscale_exits_143_and_leaves_no_temporary(tmp_path, x2_model):
    # Issue 13.7: `timeout` and `docker stop` send SIGTERM; it is handled like Ctrl-C.
    import signal
    import time

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edsr", "upscale", str(tmp_path / "a.png"), "-o",
         str(tmp_path / "out"), "--model", str(x2_model), "--tile", "64"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen = ""
    deadline = time.monotonic() + 120
    while "tile" not in seen and time.monotonic() < deadline:  # the tile bar has started
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    err = seen + proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "edsr: terminated" in err
    out = tmp_path / "out"
    assert not out.exists() or [p.name for p in out.iterdir()] == []


def test_bare_edsr_prints_the_command_list(capsys):
    from edsr.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: edsr") and all(c in out for c in ("upscale", "eval", "train"))


def test_eval_without_scale_scores_the_models_scales(capsys):
    from edsr.cli import main

    assert main(["eval", "--model", "bicubic", "--data", str(DATA / "Set5"), "--quiet"]) == 0
    rows = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == ["x2", "x3", "x4"]


def _subcommands(parser, path=("edsr",)):
    """(words, parser, listed help) for every subcommand at every level of the CLI."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _subcommands(sub, (*path, name))


def test_every_subcommand_has_a_description(capsys):
    """`edsr data list --help` and the like open with what the command does, as the list of
    commands above it says it (the help line), or more."""
    from edsr.cli import build_parser

    found = list(_subcommands(build_parser()))
    words = {" ".join(w) for w, _, _ in found}
    assert {"edsr data", "edsr data list", "edsr weights download", "edsr serve"} <= words
    for w, sub, listed in found:
        assert listed and sub.description and sub.description.strip(), w
    with pytest.raises(SystemExit):
        main(["data", "list", "--help"])
    assert "the known data sets and which are on disk" in capsys.readouterr().out
