"""Degradations (edsr.degrade): the spec, its draws, JPEG quality read back from files, and the
doors that take one: training patches, `edsr eval --degrade`, `edsr downscale --jpeg`."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import DATA, crop_set, load_rgb
from edsr import EdsrError
from edsr.degrade import (
    CLEAN,
    Draw,
    estimate_jpeg_quality,
    jpeg_roundtrip,
    parse_degradation,
)
from edsr.evaluate import evaluate
from edsr.resize import bicubic_lr
from edsr.training.data import PatchDataset


def cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "edsr", *map(str, args)], capture_output=True, text=True
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("clean", "clean"),
        ("jpeg:75", "jpeg:75"),
        ("JPEG:40-95", "jpeg:40-95"),
        ("jpeg444:90", "jpeg444:90"),
        ("clean:0.3, jpeg:40-95:0.7", "clean:0.3,jpeg:40-95:0.7"),
        ("clean:1,jpeg:50:3", "clean:0.25,jpeg:50:0.75"),
    ],
)
def test_a_spec_reads_back_in_its_canonical_form(spec, canonical):
    d = parse_degradation(spec)
    assert str(d) == canonical
    assert str(parse_degradation(str(d))) == canonical
    assert d.clean == (canonical == "clean")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "is text"),
        ("png:9", "unknown kind 'png'"),
        ("jpeg", "needs a quality"),
        ("jpeg:0", "from 1 to 100"),
        ("jpeg:101", "from 1 to 100"),
        ("jpeg:90-40", "low end first"),
        ("jpeg:abc", "not Q or QMIN-QMAX"),
        ("jpeg:75:nan", "finite number above 0"),
        ("jpeg:75:0", "finite number above 0"),
        ("clean:1:2", "a weight at most"),
    ],
)
def test_a_bad_spec_is_one_line(spec, message):
    with pytest.raises(EdsrError, match=message) as e:
        parse_degradation(spec)
    assert "\n" not in str(e.value)


def test_the_cli_refuses_a_bad_spec_before_any_work(tmp_path):
    proc = cli("eval", "--data", DATA / "Set5", "--scale", "2", "--degrade", "jpeg:0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--degrade" in proc.stderr, proc.stderr


def test_draws_are_a_function_of_the_seed_and_follow_the_weights():
    d = parse_degradation("clean:0.25,jpeg:40-60:0.75")
    a = d.draw(np.random.default_rng([3, 17]), 4000)
    assert a == d.draw(np.random.default_rng([3, 17]), 4000)
    assert a != d.draw(np.random.default_rng([3, 18]), 4000)
    clean = sum(x.kind == "clean" for x in a) / len(a)
    assert abs(clean - 0.25) < 0.03
    qualities = [x.quality for x in a if x.kind == "jpeg"]
    assert min(qualities) == 40 and max(qualities) == 60  # both ends drawn
    assert set(np.unique(qualities)) == set(range(40, 61))


def test_a_jpeg_draw_is_what_pillow_writes_and_reads():
    lr = bicubic_lr(load_rgb("butterfly.png"), 4)
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="JPEG", quality=60)
    pillow = np.asarray(Image.open(buf).convert("RGB"))
    assert np.array_equal(Draw("jpeg", 60).apply(lr), pillow)
    assert Draw("clean").apply(lr) is lr
    gray = lr[:, :, :1]
    assert jpeg_roundtrip(gray, 60).shape == gray.shape
    # 4:4:4 keeps the chroma's detail: nearer the original than 4:2:0 at the same quality
    err = {k: np.abs(Draw(k, 90).apply(lr).astype(int) - lr).mean() for k in ("jpeg", "jpeg444")}
    assert err["jpeg444"] < err["jpeg"]


@pytest.mark.parametrize("subsampling", [2, 0])
def test_jpeg_quality_is_read_back_from_the_tables(subsampling):
    img = Image.fromarray(load_rgb("bird.png"))
    for q in range(40, 101, 3):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q, subsampling=subsampling)
        with Image.open(buf) as im:
            assert estimate_jpeg_quality(im.quantization) == q
    assert estimate_jpeg_quality(None) is None
    assert estimate_jpeg_quality({}) is None


def test_training_patches_degrade_the_lr_only_and_resume_exactly(tmp_path):
    kw = dict(patch_size=16, cache_dir=tmp_path / "cache", progress=False)
    clean = PatchDataset([DATA / "Set5"], [2, 4], **kw)
    jpeg = PatchDataset([DATA / "Set5"], [2, 4], degrade=parse_degradation("jpeg:20-40"), **kw)
    for step in (0, 5, 123):
        s0, lr0, hr0 = clean.batch(step, 8, seed=1)
        s1, lr1, hr1 = jpeg.batch(step, 8, seed=1)
        assert s0 == s1 and torch.equal(hr0, hr1), "the same crops; the HR stays clean"
        assert not torch.equal(lr0, lr1)
        assert torch.equal(lr1, jpeg.batch(step, 8, seed=1)[1]), "a pure function of the step"
        # two ranks' shards are one process's batch
        halves = [jpeg.batch(step, 8, seed=1, rank=r, world_size=2)[1] for r in (0, 1)]
        assert torch.equal(torch.cat(halves), lr1)
    # each patch is one JPEG of the clean patch at a quality in the range
    s, lr_c, _ = clean.batch(7, 4, seed=2)
    _, lr_j, _ = jpeg.batch(7, 4, seed=2)
    draws = jpeg.degrade.draw(np.random.default_rng([2, 7, 1]), 4)
    for i, d in enumerate(draws):
        assert 20 <= d.quality <= 40
        want = d.apply(np.ascontiguousarray(lr_c[i].permute(1, 2, 0).numpy()))
        assert np.array_equal(lr_j[i].permute(1, 2, 0).numpy(), want)
    # a clean run's batches are the ones they were before degradations existed
    assert CLEAN.clean and torch.equal(clean.batch(7, 4, seed=2)[1], lr_c)


def test_eval_degrade_scores_what_downscale_jpeg_writes(tmp_path):
    crops = crop_set(tmp_path / "set", ("bird", "butterfly"), (0, 0, 120, 96))
    made = tmp_path / "made"
    cli("downscale", crops, "-o", made, "--scale", "2", "3", "--jpeg", "70", "--quiet")
    assert sorted(p.name for p in (made / "LR_bicubic" / "X3").iterdir()) == [
        "birdx3.jpg",
        "butterflyx3.jpg",
    ]
    with Image.open(made / "LR_bicubic" / "X3" / "birdx3.jpg") as im:
        assert im.format == "JPEG" and estimate_jpeg_quality(im.quantization) == 70
    for model in ("bicubic",):
        files = evaluate(model, [made], [2, 3], progress=False)
        degraded = evaluate(model, [crops], [2, 3], progress=False, degrade="jpeg:70")
        clean = evaluate(model, [crops], [2, 3], progress=False)
        for f, d, c in zip(files["results"], degraded["results"], clean["results"], strict=True):
            assert [r["psnr"] for r in f["per_image"]] == [r["psnr"] for r in d["per_image"]]
            assert d["degradation"] == "jpeg:70" and c["degradation"] == "clean"
            assert d["psnr"] < c["psnr"] - 0.2, "q70 costs bicubic some of its PSNR"
    assert "jpeg:70" in degraded["protocol"]["degradation"]
    # a rerun with another quality redoes every LR image, and no PNG twin is left beside it
    cli("downscale", crops, "-o", made, "--scale", "2", "3", "--quiet")
    names = sorted(p.name for p in (made / "LR_bicubic" / "X3").iterdir())
    assert names == ["birdx3.png", "butterflyx3.png"]
    again = evaluate("bicubic", [made], [2, 3], progress=False)
    assert [r["psnr"] for r in again["results"]] == [r["psnr"] for r in clean["results"]]


def test_eval_json_and_table_name_the_degradation(tmp_path):
    crops = crop_set(tmp_path / "set", ("bird",), (0, 0, 96, 96))
    out = tmp_path / "r.json"
    proc = cli(
        "eval", "--model", "bicubic", "--data", crops, "--scale", "2", "--degrade", "jpeg:50",
        "--json", out, "--quiet",
    )  # fmt: skip
    assert "LR jpeg:50" in proc.stdout
    report = json.loads(out.read_text())
    assert report["results"][0]["degradation"] == "jpeg:50"


def test_a_range_is_drawn_per_image_the_same_on_every_run(tmp_path):
    crops = crop_set(tmp_path / "set", ("bird", "head", "woman"), (0, 0, 96, 96))
    runs = [
        evaluate("bicubic", [crops], [2], progress=False, degrade="jpeg:30-90")["results"][0]
        for _ in range(2)
    ]
    assert runs[0]["per_image"] == runs[1]["per_image"]


def test_a_miniature_jpeg_training_runs_resumes_and_loads(tmp_path, capsys):
    from edsr import load_model
    from edsr.training.loop import train
    from test_train import tiny_cfg

    def cfg(folder):
        val = crop_set(tmp_path / f"val-{folder}", ("bird",), (0, 0, 60, 60))
        return tiny_cfg(
            tmp_path / folder,
            scales=[2],
            val=str(val),
            patch_size=16,
            val_every=3,
            cache_dir=str(tmp_path / "cache"),
            degrade="clean:0.2,jpeg:30-90:0.8",
            val_degrade="jpeg:60",
        )

    straight = train(cfg("a"), progress=False)
    short = cfg("b")
    short.iters = 3  # stops at step 3, as a killed run would
    train(short, progress=False)
    resumed = train(resume=tmp_path / "b" / "run", iters=6, progress=False)
    a, b = load_file(straight), load_file(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = (tmp_path / "b" / "run" / "config.toml").read_text()
    assert 'degrade = "clean:0.2,jpeg:30-90:0.8"' in saved and 'val_degrade = "jpeg:60"' in saved
    assert load_model(resumed).config()["arch"] == "edsr"
