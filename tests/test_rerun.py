"""Outputs are never inputs, and re-runs are never wrong: upscale, downscale and eval write into
a folder inside their input (or into the input itself), run again with ``--skip-existing``,
and again after the input changed, and each run's outputs are exactly what a clean run gives."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, crop_set
from edsr.cli import main
from edsr.errors import EdsrError
from edsr.evaluate import evaluate
from edsr.inference import upscale_files
from edsr.io.image import read_image, to_8bit
from edsr.resize import bicubic_lr
from sr_helpers import small_edsr

SET5 = DATA / "Set5" / "HR"


@pytest.fixture(scope="module")
def model():
    return small_edsr(2, std=0.03)


def _crop(name, box, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(SET5 / f"{name}.png").crop(box).save(dst)


def _tree(folder):
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _later(path):
    """Mark ``path`` as modified after everything written so far (coarse-mtime file systems)."""
    t = path.stat().st_mtime + 10
    os.utime(path, (t, t))


@pytest.mark.parametrize("out_name", ["out", "."], ids=["inside", "same"])
def test_upscale_twice_into_its_input_then_after_it_changed(tmp_path, model, out_name):
    """`edsr upscale d -o d/out --skip-existing` (or `-o d`): the rerun reads only the user's
    images, writes nothing new; after an image is added and one is modified, exactly those two
    are (re)done, and every output equals that image upscaled alone."""
    d = tmp_path / "d"
    _crop("bird", (0, 0, 24, 20), d / "a.png")
    _crop("baby", (10, 10, 30, 26), d / "b.png")
    _crop("head", (5, 5, 21, 23), d / "sub" / "c.png")
    out = d / out_name

    def expected(*names):
        """name -> the bytes of that input upscaled on its own, into a clean folder."""
        ref = tmp_path / "ref"
        shutil.rmtree(ref, ignore_errors=True)
        got = {}
        for rel in names:
            dst = ref / rel.replace(".png", "_x2.png")
            upscale_files([d / rel], dst, model, 2, progress=False)  # one file, no folder
            got[rel.replace(".png", "_x2.png")] = dst.read_bytes()
        return got

    def outputs():
        return {k: v for k, v in _tree(out).items() if k.endswith("_x2.png")}

    first = upscale_files([d], out, model, 2, skip_existing=True, progress=False)
    assert len(first.written) == 3 and not first.skipped_existing
    assert outputs() == expected("a.png", "b.png", "sub/c.png")
    before = _tree(d)

    notes = []
    again = upscale_files([d], out, model, 2, skip_existing=True, progress=False, say=notes.append)
    assert not again.written and len(again.skipped_existing) == 3 and again.ok
    assert _tree(d) == before  # nothing new: no out/out, no a_x2_x2.png
    assert len(notes) == 1 and notes[0].startswith("not read as inputs")

    _crop("woman", (0, 0, 18, 22), d / "e.png")  # a new image
    _crop("butterfly", (40, 40, 66, 60), d / "a.png")  # a modified one
    _later(d / "a.png")
    third = upscale_files([d], out, model, 2, skip_existing=True, progress=False)
    assert sorted(p.name for p in third.written) == ["a_x2.png", "e_x2.png"]
    assert sorted(p.name for p in third.skipped_existing) == ["b.png", "c.png"]
    assert outputs() == expected("a.png", "b.png", "e.png", "sub/c.png")
    # the inputs themselves are untouched, and nothing but the outputs was added
    assert set(_tree(d)) == {"a.png", "b.png", "e.png", "sub/c.png"} | {
        (f"{out_name}/{k}" if out_name != "." else k) for k in outputs()
    }


def test_upscale_cli_rerun_into_the_input_folder_writes_nothing_new(tmp_path, capsys):
    """The case of the report, through the CLI and the bundled model: `-o d/out`, then again
    with --skip-existing: exit 0, d/out/out never appears."""
    d = tmp_path / "d"
    _crop("bird", (0, 0, 16, 12), d / "ok.png")
    argv = ["upscale", str(d), "-o", str(d / "out"), "--scale", "2", "--quiet"]
    assert main(argv) == 0
    assert main([*argv, "--skip-existing"]) == 0
    assert sorted(_tree(d)) == ["ok.png", "out/.edsr-upscale.json", "out/ok_x2.png"]
    assert read_image(d / "out" / "ok_x2.png").pixels.shape == (24, 32, 3)


def _lr(path, s):
    return bicubic_lr(to_8bit(read_image(path).pixels), s)


@pytest.mark.parametrize("out_name", ["out", "."], ids=["inside", "same"])
def test_downscale_twice_into_its_input_then_after_it_changed(tmp_path, out_name, capsys):
    """`edsr downscale X -o X` (or X/out): later runs keep reading the user's images, not
    X/HR; after an image is added and one modified, exactly those are redone."""
    x = tmp_path / "X"
    _crop("bird", (0, 0, 40, 36), x / "a.png")
    _crop("baby", (0, 0, 30, 30), x / "b.png")
    out = x / out_name
    argv = ["downscale", str(x), "-o", str(out), "--scale", "2", "--jobs", "1", "--quiet"]

    def check(names):
        tree = _tree(out)
        assert sorted(k for k in tree if k.startswith(("HR/", "LR_bicubic/"))) == sorted(
            [f"HR/{n}.png" for n in names] + [f"LR_bicubic/X2/{n}x2.png" for n in names]
        )
        for n in names:
            assert tree[f"HR/{n}.png"] == (x / f"{n}.png").read_bytes()
            lr = read_image(out / "LR_bicubic" / "X2" / f"{n}x2.png").pixels
            assert np.array_equal(lr, _lr(x / f"{n}.png", 2))

    assert main(argv) == 0
    check(["a", "b"])
    before = _tree(x)
    capsys.readouterr()
    assert main(argv) == 0
    assert "wrote 0 images; 2 already done" in capsys.readouterr().out
    assert _tree(x) == before

    _crop("head", (0, 0, 26, 28), x / "c.png")  # new
    _crop("woman", (0, 0, 40, 36), x / "a.png")  # modified, same size
    assert main(argv) == 0
    assert "wrote 2 images; 1 already done" in capsys.readouterr().out
    check(["a", "b", "c"])


def test_downscale_refuses_a_tiny_image_without_leaving_its_hr_copy(tmp_path, capsys):
    src = tmp_path / "hr"
    _crop("bird", (0, 0, 20, 20), src / "ok.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(src / "tiny.png")
    out = tmp_path / "o"
    assert main(["downscale", str(src), "-o", str(out), "--scale", "2", "--jobs", "1",
                 "--quiet"]) == 1  # fmt: skip
    assert "tiny.png (1x1) is smaller than the scale x2" in capsys.readouterr().out
    assert sorted(_tree(out)) == [".edsr-downscale.json", "HR/ok.png", "LR_bicubic/X2/okx2.png"]


def test_downscale_keeps_alpha_in_the_lr_images(tmp_path):
    """RGBA: the LR keeps an alpha channel (bicubic of the alpha); its colour is the LR that
    evaluation reads, so scores do not change."""
    src = tmp_path / "hr"
    src.mkdir()
    rgb = Image.open(SET5 / "bird.png").crop((0, 0, 48, 40))
    alpha = Image.linear_gradient("L").resize((48, 40))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba.save(src / "a.png")
    assert main(["downscale", str(src), "-o", str(tmp_path / "o"), "--scale", "2", "3",
                 "--jobs", "1", "--quiet"]) == 0  # fmt: skip
    for s in (2, 3):
        lr = read_image(tmp_path / "o" / "LR_bicubic" / f"X{s}" / f"ax{s}.png")
        assert np.array_equal(lr.pixels, bicubic_lr(np.asarray(rgb), s))
        assert lr.alpha is not None
        assert np.array_equal(lr.alpha, bicubic_lr(np.asarray(alpha)[:, :, None], s)[:, :, 0])


def test_downscale_disk_full_is_a_write_failure_that_stops_the_run(tmp_path, monkeypatch, capsys):
    src = tmp_path / "hr"
    _crop("bird", (0, 0, 20, 20), src / "a.png")
    _crop("baby", (0, 0, 20, 20), src / "b.png")
    out = tmp_path / "o"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # every write fails as on a full disk
    code = main(["downscale", str(src), "-o", str(out), "--scale", "2", "--jobs", "1", "--quiet"])
    monkeypatch.undo()
    err = capsys.readouterr()
    assert code == 1
    line = err.err.strip()
    assert line.count("\n") == 0 and "disk full while writing" in line, line
    assert "unreadable" not in err.out + err.err and "stopped" in line
    assert not [p for p in out.rglob("*") if p.is_file()]  # no half-written file


def _with_lr(tmp_path, names, given):
    root = crop_set(tmp_path / "set", names, (0, 0, 48, 48))
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    for n in given:
        lr = _lr(root / "HR" / f"{n}.png", 2)
        Image.fromarray(lr).save(root / "LR_bicubic" / "X2" / f"{n}x2.png")
    return root


def test_eval_refuses_a_benchmark_folder_with_one_lr_file_missing(tmp_path, capsys):
    """Mixing given and computed LR images is a different protocol image by image: refused
    before any work, naming the missing file; with the X2 folder removed, every LR image is
    made by bicubic and the scores equal those of the complete folder."""
    names = ("baby", "bird", "head")
    root = _with_lr(tmp_path, names, ["baby", "head"])
    with pytest.raises(EdsrError, match=r"LR_bicubic/X2/birdx2.png is missing, but the other"):
        evaluate("bicubic", [root], [2], progress=False)
    code = main(["eval", "--model", "bicubic", "--data", str(root), "--scale", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "birdx2.png is missing" in err
    complete = _with_lr(tmp_path / "c", names, names)
    shutil.rmtree(root / "LR_bicubic" / "X2")
    a = evaluate("bicubic", [root], [2], progress=False)["results"][0]
    b = evaluate("bicubic", [complete], [2], progress=False)["results"][0]
    assert a["images"] == 3 and a["per_image"] == b["per_image"]


@pytest.mark.parametrize("save_name", ["sr", "."], ids=["inside", "same"])
def test_eval_never_scores_the_images_it_saved(tmp_path, save_name):
    """A flat folder evaluated with --save-images inside it (or into it) scores the same
    images, with the same results, on every run."""
    flat = tmp_path / "flat"
    for n in ("baby", "bird"):
        _crop(n, (0, 0, 40, 40), flat / f"{n}.png")
    save = flat / save_name
    runs = [
        evaluate("bicubic", [flat], [2], save_images=save, overwrite=True, progress=False)
        for _ in range(2)
    ]
    for r in runs:
        assert [p["image"] for p in r["results"][0]["per_image"]] == ["baby.png", "bird.png"]
    assert runs[0]["results"][0]["per_image"] == runs[1]["results"][0]["per_image"]
    saved = sorted(k for k in _tree(save) if k.endswith("_x2.png"))
    assert saved == ["flat/x2/baby_x2.png", "flat/x2/bird_x2.png"]


# A folder remembers its job (edsr.inference.job): a re-run with options left out continues
# it, one with an option that differs is refused before any model is loaded.


@pytest.fixture(scope="module")
def mdsr_files(tmp_path_factory):
    """Two small MDSR x2/x3 checkpoint files with different weights."""
    from edsr.models import MDSR
    from edsr.weights import save_model
    from sr_helpers import random_weights

    d = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        m = random_weights(MDSR(scales=(2, 3), n_resblocks=2, n_feats=16), 0.03, seed=seed)
        paths.append(save_model(m, d / f"m{seed}.safetensors"))
    return paths


def _holiday(tmp_path, n=3):
    d = tmp_path / "holiday"
    for i, name in enumerate(("bird", "baby", "head", "woman", "butterfly")[:n]):
        _crop(name, (i, i, i + 20, i + 16), d / f"{name}.png")
    return d


def _pngs(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


def test_a_rerun_with_options_left_out_continues_the_folders_job(tmp_path, mdsr_files, capsys):
    """The report's case: a job x3 with a named model, stopped (one output missing), then the
    short command with --skip-existing: x3 with that model, said on one line; no *_x4.png."""
    d, out = _holiday(tmp_path), tmp_path / "big"
    model = str(mdsr_files[0])
    assert main(["upscale", str(d), "-o", str(out), "--model", model, "--scale", "3",
                 "--quiet"]) == 0  # fmt: skip
    first = (out / "baby_x3.png").read_bytes()
    (out / "baby_x3.png").unlink()  # as if stopped before it was written
    capsys.readouterr()
    assert main(["upscale", str(d), "-o", str(out), "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert (
        f"edsr: continuing the job recorded in {out} (model {model}, x3); 2 of 3 done"
        in err.splitlines()
    ), err
    assert _pngs(out) == ["baby_x3.png", "bird_x3.png", "head_x3.png"]
    assert (out / "baby_x3.png").read_bytes() == first  # the same model made it


def test_an_option_given_that_differs_from_the_folders_job_is_refused(tmp_path, mdsr_files, capsys):
    """Each differing option is one line naming both settings and the two ways on; nothing
    is written. --overwrite starts over, with a new record."""
    d, out = _holiday(tmp_path), tmp_path / "big"
    model = tmp_path / "m.safetensors"
    shutil.copy(mdsr_files[0], model)
    base = ["upscale", str(d), "-o", str(out), "--quiet"]
    assert main([*base, "--model", str(model), "--scale", "3"]) == 0
    before = _tree(out)
    capsys.readouterr()

    def refused(*extra):
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("edsr: error: "), err
        assert _tree(out) == before
        return err

    err = refused("--scale", "2", "--skip-existing")
    assert f"{out} holds a job run with --scale 3 (.edsr-upscale.json); this one has " in err
    assert "--scale 2: pass --overwrite to start over, or leave out --scale to continue" in err
    err = refused("--model", str(mdsr_files[1]))
    assert f"with --model {model} " in err and f"has --model {mdsr_files[1]}:" in err
    err = refused("--precision", "bf16", "--ensemble")
    assert "with --precision auto, no --ensemble (" in err
    assert "has --precision bf16, --ensemble: " in err
    assert "leave out --precision and --ensemble to continue" in err
    # the checkpoint replaced under the same name is another model: not continued with
    shutil.copy(mdsr_files[1], model)
    err = refused("--skip-existing")
    assert f"{model} has changed since the job in {out} started (sha256 " in err

    assert main([*base, "--model", str(model), "--scale", "2", "--overwrite"]) == 0
    assert _pngs(out) == sorted([f"{n}_x{s}.png" for n in ("baby", "bird", "head") for s in (2, 3)])
    capsys.readouterr()
    assert main([*base, "--skip-existing"]) == 0  # continues the new job: x2
    assert _pngs(out) == sorted([f"{n}_x{s}.png" for n in ("baby", "bird", "head") for s in (2, 3)])


def test_the_library_records_the_job_it_is_given_and_refuses_another(tmp_path, model):
    """upscale_files(job=...) is the CLI's check: the record is written when the job starts,
    another job into that folder is refused unless overwrite; without job, nothing is kept."""
    from edsr.inference.job import JOB_FILE, FolderJob, read_job

    d, out = _holiday(tmp_path, 2), tmp_path / "o"
    job = FolderJob(model="a.pt", sha256="ab" * 32, precision="fp32")
    upscale_files([d], out, model, job=job, progress=False)
    assert read_job(out) == FolderJob(model="a.pt", sha256="ab" * 32, scale=2, precision="fp32")
    other = FolderJob(model="b.pt", sha256="cd" * 32, precision="fp32")
    with pytest.raises(EdsrError, match=r"holds a job run with --model a.pt .* --model b.pt:"):
        upscale_files([d], out, model, job=other, skip_existing=True, progress=False)
    # the same file under another name is the same model
    same = FolderJob(model="./a.pt", sha256="ab" * 32, precision="fp32")
    again = upscale_files([d], out, model, job=same, skip_existing=True, progress=False)
    assert len(again.skipped_existing) == 2
    upscale_files([d], out, model, job=other, overwrite=True, progress=False)
    assert read_job(out).model == "b.pt"
    plain = tmp_path / "plain"
    upscale_files([d], plain, model, progress=False)
    assert not (plain / JOB_FILE).exists()


def _slow_cli(argv):
    """`edsr` in a subprocess whose images each take half a second more."""
    code = (
        "import sys, time\n"
        "import edsr.inference.files as f\n"
        "real = f.upscale_image_file\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.5)\n"
        "    return real(*a, **k)\n"
        "f.upscale_image_file = slow\n"
        "from edsr.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, argv)], stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stopped_folder_job_says_how_far_it_got_and_how_to_finish(tmp_path, mdsr_files, sig):
    """SIGTERM (or Ctrl-C) after the first outputs: the last line counts what is done and
    names --skip-existing; that command, short, finishes the job with the same settings."""
    d, out = _holiday(tmp_path, 5), tmp_path / "big"
    argv = ["upscale", d, "-o", out, "--model", mdsr_files[0], "--scale", "3", "--quiet"]
    proc = _slow_cli(argv)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*_x3.png"))) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    done = len(list(out.glob("*_x3.png")))
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert 2 <= done < 5
    assert err.splitlines()[-1] == (
        f"edsr: stopped after {done} of 5 images; run the same command with --skip-existing "
        "to finish"
    )
    again = subprocess.run(
        [sys.executable, "-m", "edsr", "upscale", d, "-o", out, "--skip-existing"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert f"(model {mdsr_files[0]}, x3); {done} of 5 done" in again.stderr
    assert len(_pngs(out)) == 5 and all(n.endswith("_x3.png") for n in _pngs(out))


def test_the_stopped_line_follows_the_command_given(tmp_path, model, monkeypatch, capsys):
    """Stopped under --skip-existing: run it again; under --overwrite: --skip-existing in its
    place (the same command would redo what is done). One image alone: as before."""
    import edsr.inference.files as files
    from edsr.errors import Terminated

    d, out = _holiday(tmp_path, 4), tmp_path / "o"
    calls = []
    real = files.upscale_image_file

    def stop_at_third(*a, **k):
        calls.append(a[0])
        if len(calls) == 3:
            raise Terminated
        return real(*a, **k)

    monkeypatch.setattr(files, "upscale_image_file", stop_at_third)
    for options, how in [
        ({}, "with --skip-existing"),
        ({"skip_existing": True}, "again"),
        ({"overwrite": True}, "with --skip-existing in place of --overwrite"),
    ]:
        calls.clear()
        out = tmp_path / f"o{len(options)}{sorted(options)}"
        with pytest.raises(Terminated) as e:
            upscale_files([d], out, model, progress=False, **options)
        assert str(e.value) == f"stopped after 2 of 4 images; run the same command {how} to finish"
    calls[:] = [0, 0]
    with pytest.raises(Terminated, match=r"^$"):
        upscale_files([d / "bird.png"], tmp_path / "one", model, progress=False)
    assert not (tmp_path / "one").exists()  # a job that wrote nothing leaves nothing


def test_already_exists_names_both_ways_on(tmp_path, mdsr_files, capsys):
    d, out = _holiday(tmp_path), tmp_path / "big"
    argv = ["upscale", str(d), "-o", str(out), "--model", str(mdsr_files[0]), "--scale", "2",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    (out / "head_x2.png").unlink()
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        f"edsr: error: {out / 'baby_x2.png'} and 1 more outputs already exist; pass "
        "--skip-existing to leave them and finish the rest, or --overwrite to redo them\n"
    )
    one = tmp_path / "one.png"
    one.write_bytes(b"x")
    assert main(["upscale", str(d / "bird.png"), "-o", str(one), "--model", str(mdsr_files[0]),
                 "--quiet"]) == 1  # fmt: skip
    assert capsys.readouterr().err == (
        f"edsr: error: {one} already exists; pass --skip-existing to leave it and go on, or "
        "--overwrite to replace it\n"
    )
