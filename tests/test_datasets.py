"""Data set discovery: one reading of the benchmark, DIV2K and flat layouts, eval and training."""

import pytest
from PIL import Image

from edsr import EdsrError
from edsr.evaluate import discover
from edsr.io.datasets import find_dataset
from edsr.training.data import find_sources


def _div2k(root, splits=("train", "valid")):
    for split in splits:
        (root / f"DIV2K_{split}_HR").mkdir(parents=True)
        (root / f"DIV2K_{split}_LR_bicubic" / "X2").mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(root / f"DIV2K_{split}_HR" / f"{split}1.png")
        lr = root / f"DIV2K_{split}_LR_bicubic" / "X2" / f"{split}1x2.png"
        Image.new("RGB", (8, 8)).save(lr)
    return root


def test_div2k_split_eval_takes_valid_and_training_takes_train(tmp_path):
    root = _div2k(tmp_path / "DIV2K")
    ev = discover(root)
    assert ev.kind == "div2k" and [p.name for p in ev.hr_files] == ["valid1.png"]
    assert (
        ev.lr_path(ev.hr_files[0], 2).name == "valid1x2.png"
        and ev.lr_path(ev.hr_files[0], 3) is None
    )
    src = find_sources([root], [2, 3])
    assert [s.hr.name for s in src] == ["train1.png"] and set(src[0].lr) == {2}
    # Pointing at the HR folder itself finds its LR images beside it, for both.
    direct = find_dataset(root / "DIV2K_train_HR", split="train")
    assert direct.kind == "div2k" and direct.lr_root == root / "DIV2K_train_LR_bicubic"
    assert find_sources([root / "DIV2K_train_HR"], [2])[0].lr[2].name == "train1x2.png"


def test_benchmark_and_flat_layouts_agree_between_eval_and_training(tmp_path):
    bench = tmp_path / "Bench"
    (bench / "HR").mkdir(parents=True)
    (bench / "LR_bicubic" / "X4").mkdir(parents=True)
    for name in ("b", "a"):
        Image.new("RGB", (16, 16)).save(bench / "HR" / f"{name}.png")
    Image.new("RGB", (4, 4)).save(bench / "LR_bicubic" / "X4" / "ax4.png")
    (bench / "HR" / ".hidden.png").write_bytes(b"")
    (bench / "HR" / "notes.txt").write_text("not an image")
    for path in (bench, bench / "HR"):  # Set5/HR means Set5
        ev = discover(path)
        assert ev.name == "Bench" and ev.kind == "benchmark"
        assert [p.name for p in ev.hr_files] == ["a.png", "b.png"]
        src = find_sources([path], [4])
        assert [s.hr for s in src] == list(ev.hr_files)
        assert src[0].lr == {4: bench / "LR_bicubic" / "X4" / "ax4.png"} and src[1].lr == {}
    flat = tmp_path / "flat"
    (flat / "sub").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(flat / "sub" / "c.jpg")
    ev = discover(flat)
    assert ev.kind == "folder" and ev.lr_root is None and [p.name for p in ev.hr_files] == ["c.jpg"]


def test_missing_or_empty_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty" / "HR").mkdir(parents=True)
    (tmp_path / "file.png").write_bytes(b"")
    for path, what, message in [
        (tmp_path / "nope", "validation", "validation directory .* does not exist"),
        (tmp_path / "file.png", "data", "is not a directory"),
        (tmp_path / "empty", "training", "no images in training directory"),
    ]:
        with pytest.raises(EdsrError, match=message) as e:
            find_dataset(path, what=what)
        assert "\n" not in str(e.value)
