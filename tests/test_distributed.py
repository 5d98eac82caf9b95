"""Inference and evaluation sharded over torchrun: 2 gloo processes on the CPU give what one
process gives, file for file and number for number; an error on one rank ends all of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import crop_set
from edsr import EDSR, save_model
from edsr.inference.distributed import SINGLE, Ranks, cpu_cores, from_env
from local_server import torchrun_cmd
from test_train import ENV

NAMES = ("baby", "bird", "butterfly", "head", "woman")


def edsr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edsr", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    # One process gets the threads each of the two ranks gets, so both do the same arithmetic.
    env = {**ENV, "OMP_NUM_THREADS": str(max(1, cpu_cores() // 2))}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def edsr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("edsr:", "skipped"))]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    torch.manual_seed(0)
    save_model(EDSR(scale=2, n_resblocks=1, n_feats=8), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Crops of the real Set5 images, and one unreadable file that falls to rank 1 (index 3)."""
    root = crop_set(tmp_path_factory.mktemp("set"), NAMES, (20, 30, 76, 78))
    (root / "HR" / "c_broken.png").write_bytes(b"not a png")
    return root


def test_shares_cover_the_list_once_in_order():
    items = list(range(11))
    shares = [Ranks(rank=r, world=3).shard(items) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert SINGLE.shard(items) == items


def test_environment_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env() == SINGLE and not SINGLE.spread
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert from_env() == Ranks(rank=3, world=4, local_rank=1, local_world=2)


def test_device_per_rank(monkeypatch):
    spread = Ranks(rank=3, world=4, local_rank=1, local_world=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [spread.device(d) for d in (None, "auto", "cuda", "cuda:0", "cpu")] == [
        "cuda:1",
        "cuda:1",
        "cuda:1",
        "cuda:0",
        "cpu",
    ]
    assert [SINGLE.device(d) for d in (None, "cuda", "cpu")] == ["cuda", "cuda", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [spread.device(d) for d in (None, "cpu")] == ["cpu", "cpu"]
    assert SINGLE.device(None) == "cpu"


def test_single_process_runs_in_place_and_raises_as_is():
    assert SINGLE.check(lambda: 5) == 5 and SINGLE.gather(lambda: 5) == [5]
    assert SINGLE.from_main(lambda: 5) == 5
    with pytest.raises(ZeroDivisionError):
        SINGLE.gather(lambda: 1 // 0)


@pytest.mark.slow
def test_upscale_over_two_ranks_equals_one_process(tmp_path, images, tiny_model):
    args = ("upscale", str(images / "HR"), "-o", "out", "--model", str(tiny_model), "--quiet")
    one = run(edsr_cmd(*args), tmp_path / "one")
    two = run(torchrun_cmd(*args), tmp_path / "two")
    assert one.returncode == two.returncode == 1, two.stderr[-3000:]  # the unreadable file
    want = sorted(p.name for p in (tmp_path / "one" / "out").iterdir())
    assert want == [".edsr-upscale.json", *(f"{n}_x2.png" for n in NAMES)]
    assert sorted(p.name for p in (tmp_path / "two" / "out").iterdir()) == want
    for name in want:
        a = (tmp_path / "one" / "out" / name).read_bytes()
        assert (tmp_path / "two" / "out" / name).read_bytes() == a, name
    assert one.stdout == two.stdout == ("wrote 5 images to out; 1 failed: c_broken.png\n")
    assert edsr_lines(two.stderr) == edsr_lines(one.stderr)
    assert len(edsr_lines(one.stderr)) == 1 and "c_broken.png" in one.stderr

    # Again with --skip-existing: everything is there but the unreadable file's output.
    again = run(torchrun_cmd(*args, "--skip-existing"), tmp_path / "two")
    assert again.stdout == "wrote 0 images to out; skipped 5 already written; " + (
        "1 failed: c_broken.png\n"
    )


def without_seconds(table: str) -> list[list[str]]:
    return [row.split()[:5] + row.split()[6:] for row in table.splitlines()]


@pytest.mark.slow
def test_eval_over_two_ranks_equals_one_process(tmp_path, images, tiny_model):
    args = ("eval", "--data", str(images), "--scale", "2", "--model", str(tiny_model))
    one = run(edsr_cmd(*args, "--json", "r.json", "--quiet"), tmp_path / "one")
    two = run(torchrun_cmd(*args, "--json", "r.json", "--quiet"), tmp_path / "two")
    assert one.returncode == two.returncode == 1, two.stderr[-3000:]  # the unreadable file
    assert without_seconds(two.stdout) == without_seconds(one.stdout)
    assert one.stdout.count("wrote r.json") == 1 and two.stdout.count("wrote r.json") == 1
    assert two.stdout.splitlines()[2].startswith("skipped 1 unreadable image(s): ")
    assert two.stdout.splitlines()[2].endswith("/c_broken.png")
    assert two.stderr.count("skipped unreadable image:") == 1  # by rank 1, which read it
    a, b = (json.loads((tmp_path / d / "r.json").read_text()) for d in ("one", "two"))
    for report in (a, b):
        for row in report["results"]:
            assert row.pop("seconds") > 0
    assert a == b
    assert [r["image"] for r in b["results"][0]["per_image"]] == [f"{n}.png" for n in NAMES]


@pytest.mark.slow
def test_an_error_on_one_rank_ends_all_and_is_told_once(tmp_path, images, tiny_model):
    """An image smaller than the scale ends an evaluation; it falls to rank 1 alone, and
    rank 0 (which has all its own images scored by then) reports it and does not wait."""
    data = tmp_path / "data"
    (data / "HR").mkdir(parents=True)
    for name in ("a", "c", "d"):
        (data / "HR" / f"{name}.png").write_bytes((images / "HR" / "baby.png").read_bytes())
    Image.new("RGB", (1, 1)).save(data / "HR" / "b.png")  # index 1: rank 1's
    args = ("eval", "--data", str(data), "--scale", "2", "--model", str(tiny_model), "--quiet")
    one = run(edsr_cmd(*args), tmp_path / "one")
    two = run(torchrun_cmd(*args), tmp_path / "two")
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout == ""
    line = "edsr: error: " + str(data / "HR" / "b.png") + " (1x1) is smaller than the scale x2"
    assert edsr_lines(one.stderr) == edsr_lines(two.stderr) == [line]
