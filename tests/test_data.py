import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from edsr import EdsrError
from edsr.resize import imresize
from edsr.training.data import (
    ImageCache,
    PatchDataset,
    Source,
    batch_loader,
    dihedral_np,
    find_sources,
)


@pytest.fixture(scope="module")
def set5(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return PatchDataset([DATA / "Set5"], [2, 3, 4], patch_size=16, cache_dir=cache, progress=False)


def test_batches_are_a_function_of_seed_and_step(set5):
    a = set5.batch(7, 8, seed=1)
    b = set5.batch(7, 8, seed=1)
    c = set5.batch(8, 8, seed=1)
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[1], c[1]) or a[0] != c[0]
    scale, lr, hr = a
    assert lr.shape == (8, 3, 16, 16) and hr.shape == (8, 3, 16 * scale, 16 * scale)
    assert lr.dtype == torch.uint8


def test_ranks_cut_the_global_batch_into_disjoint_shards(set5):
    scale, lr, hr = set5.batch(3, 8, seed=0)
    parts = [set5.batch(3, 8, seed=0, rank=r, world_size=2) for r in range(2)]
    assert all(p[0] == scale for p in parts)
    assert torch.equal(torch.cat([p[1] for p in parts]), lr)
    assert torch.equal(torch.cat([p[2] for p in parts]), hr)


def test_loader_order_does_not_depend_on_workers(set5):
    plain = list(batch_loader(set5, 5, 11, 4, seed=3))
    two = list(batch_loader(set5, 5, 11, 4, seed=3, workers=2))
    assert [b[0] for b in plain] == [b[0] for b in two] == list(range(5, 11))
    for (_, s1, lr1, hr1), (_, s2, lr2, hr2) in zip(plain, two, strict=True):
        assert s1 == s2 and torch.equal(lr1, lr2) and torch.equal(hr1, hr2)


def test_all_scales_and_all_dihedral_transforms_are_drawn(set5):
    scales = {set5.batch(i, 2, seed=0)[0] for i in range(60)}
    assert scales == {2, 3, 4}


def test_lr_and_hr_patches_stay_aligned_under_every_transform(set5):
    """Downscaling an HR patch must give its LR patch (interior), whatever flip or rotation."""
    for step in range(12):
        scale, lr, hr = set5.batch(step, 4, seed=5)
        down = imresize(hr.double(), 1 / scale)
        inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
        assert (down[inner] - lr.double()[inner]).abs().mean() < 2.0, step


def test_dihedral_group():
    a = np.arange(12).reshape(3, 4)
    outs = {dihedral_np(a, k).tobytes() + bytes(dihedral_np(a, k).shape) for k in range(8)}
    assert len(outs) == 8


def test_layouts_and_existing_lr_files(tmp_path):
    bench = tmp_path / "Bench"
    (bench / "HR").mkdir(parents=True)
    (bench / "LR_bicubic" / "X2").mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(bench / "HR" / "a.png")
    Image.new("RGB", (20, 15), (200, 0, 0)).save(bench / "LR_bicubic" / "X2" / "ax2.png")
    div2k = tmp_path / "DIV2K"
    (div2k / "DIV2K_train_HR").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(div2k / "DIV2K_train_HR" / "0001.png")
    flat = tmp_path / "flat"
    (flat / "deep").mkdir(parents=True)
    Image.new("L", (36, 36)).save(flat / "deep" / "g.png")
    srcs = find_sources([bench, div2k, flat], [2])
    assert [s.hr.name for s in srcs] == ["a.png", "0001.png", "g.png"]
    assert srcs[0].lr == {2: bench / "LR_bicubic" / "X2" / "ax2.png"}
    data = PatchDataset(
        [bench, div2k, flat], [2], patch_size=8, cache_dir=tmp_path / "c", progress=False
    )
    # The data set's own LR file is used, not a fresh bicubic one (it is pure red here).
    assert data.lr[2][0][0, 0].tolist() == [200, 0, 0]
    assert data.hr[2].shape == (36, 36, 3), "gray training images become RGB"


def test_small_images_are_skipped_per_scale_with_a_warning(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    with pytest.warns(UserWarning, match="x4: 1 image"):
        data = PatchDataset(
            [tmp_path], [2, 4], patch_size=8, cache_dir=tmp_path / "c", progress=False
        )
    assert len(data.eligible[2]) == 2 and len(data.eligible[4]) == 1


def test_bad_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdsrError, match="no images in training directory"):
        PatchDataset([tmp_path / "empty"], [2], cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(EdsrError, match="does not exist"):
        PatchDataset([tmp_path / "nope"], [2], cache_dir=tmp_path / "c", progress=False)
    Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with (
        pytest.raises(EdsrError, match="large enough"),
        pytest.warns(UserWarning, match="unreadable"),
    ):
        PatchDataset([tmp_path], [2], patch_size=48, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(EdsrError, match="broken.png"):
        PatchDataset(
            [tmp_path],
            [2],
            patch_size=4,
            cache_dir=tmp_path / "c",
            on_bad_image="fail",
            progress=False,
        )


def test_cache_detects_damage_and_rebuilds(tmp_path):
    src = Source(DATA / "Set5" / "HR" / "bird.png", {})
    cache = ImageCache(tmp_path)
    calls = []

    def make():
        calls.append(1)
        return np.full((4, 5, 3), 7, np.uint8)

    a = cache.get(src, 2, make, mmap=False)
    b = cache.get(src, 2, make, mmap=True)
    assert len(calls) == 1 and np.array_equal(a, b)
    npy = next(tmp_path.glob("*.npy"))
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF
    npy.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="damaged"):
        c = cache.get(src, 2, make, mmap=False)
    assert len(calls) == 2 and np.array_equal(c, a)
    assert not list(tmp_path.glob("*.tmp"))
