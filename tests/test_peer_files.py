"""Other projects' files load to the same pictures their own code makes.

The fixtures in tests/data/peers/ were written once by the peers' own code
(scripts/make_peer_fixtures.py): super-image 0.2.0's EDSR and MDSR (``save_pretrained``
folders) and BasicSR 1.4.2's EDSR in the wrappers trainers put around it, each beside the
picture the peer made from input.png. Each test loads a file through edsr and compares.
"""

import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import edsr
from conftest import DATA
from edsr import CheckpointError, load_model, save_model
from edsr.weights import superimage
from edsr.weights.convert import normalize_state_dict

PEERS = DATA / "peers"
SI_EDSR, SI_MDSR = PEERS / "superimage-edsr", PEERS / "superimage-mdsr"


def _max_diff(model, reference: str, scale: int | None = None) -> int:
    out = np.asarray(edsr.upscale(Image.open(PEERS / "input.png"), model, scale=scale))
    ref = np.asarray(Image.open(PEERS / reference))
    assert out.shape == ref.shape
    return int(np.abs(out.astype(int) - ref.astype(int)).max())


@pytest.mark.parametrize(
    "spec,scale,reference",
    [
        ("superimage-edsr", 2, "superimage-edsr_x2.png"),
        ("superimage-edsr", 3, "superimage-edsr_x3.png"),
        ("superimage-edsr/pytorch_model_2x.pt", None, "superimage-edsr_x2.png"),
        ("superimage-edsr/pytorch_model_3x.pt", 3, "superimage-edsr_x3.png"),
        ("superimage-mdsr", 2, "superimage-mdsr_x2.png"),
        ("superimage-mdsr", 4, "superimage-mdsr_x4.png"),
        ("superimage-mdsr/pytorch_model_4x.pt", None, "superimage-mdsr_x4.png"),
    ],
)
def test_superimage_folder_and_file_give_the_peers_pixels(spec, scale, reference):
    model = load_model(PEERS / spec, scale=scale)
    assert model.config()["rgb_mean"] == [0.0, 0.0, 0.0]
    assert _max_diff(model, reference, scale) <= 1


def test_superimage_file_read_the_authors_way_is_far_off():
    sd = normalize_state_dict(torch.load(SI_EDSR / "pytorch_model_3x.pt", weights_only=True))
    wrong = edsr.weights.model_from_state_dict(sd)  # keys alone: the authors' convention
    assert _max_diff(wrong, "superimage-edsr_x3.png", 3) > 40


def test_superimage_bare_file_by_name_or_by_its_weights(tmp_path):
    # Named as save_pretrained names it, without its config: the name is the evidence.
    shutil.copy(SI_EDSR / "pytorch_model_2x.pt", tmp_path / "pytorch_model_2x.pt")
    assert _max_diff(load_model(tmp_path / "pytorch_model_2x.pt"), "superimage-edsr_x2.png") <= 1
    # Renamed: its weights keep a flat gray only on 0..1 images (7 levels, 57 the other way).
    shutil.copy(SI_EDSR / "pytorch_model_3x.pt", tmp_path / "my-edsr.pt")
    assert _max_diff(load_model(tmp_path / "my-edsr.pt"), "superimage-edsr_x3.png") <= 1


def test_superimage_file_that_cannot_be_told_apart_is_refused(tmp_path):
    # The x2 fixture, renamed and without its config: 8 vs 15 levels, too close to call.
    shutil.copy(SI_EDSR / "pytorch_model_2x.pt", tmp_path / "my-edsr.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "my-edsr.pt")
    msg = str(e.value)
    assert "my-edsr.pt has the authors' EDSR key names" in msg and "\n" not in msg
    assert "put its config.json beside it or name it pytorch_model_<S>x.pt" in msg
    # Both ways out the message gives work: the config beside it ...
    shutil.copy(SI_EDSR / "config.json", tmp_path / "config.json")
    assert _max_diff(load_model(tmp_path / "my-edsr.pt"), "superimage-edsr_x2.png") <= 1
    # ... or, for the authors' convention, the file without its mean-shift tensors.
    sd = torch.load(SI_EDSR / "pytorch_model_2x.pt", weights_only=True)
    authors = {k: v for k, v in sd.items() if not k.startswith(("sub_mean", "add_mean"))}
    torch.save(authors, tmp_path / "authors.pt")
    (tmp_path / "config.json").unlink()
    assert "rgb_mean" not in load_model(tmp_path / "authors.pt").config()


def test_flat_gray_test_on_trained_models_of_both_conventions():
    """The numeric evidence, validated where the answer is known: the bundled MDSR and the
    BasicSR fixture are the authors' convention, the trained super-image x3 fixture is not."""
    bundled = load_model()
    sd = bundled.state_dict()
    model = superimage.flat_gray_model(bundled.config())
    authors = superimage.flat_error(model, sd)
    peer_sd = {
        k: v * 255 if k.endswith(".bias") and not k.startswith(("sub", "add")) else v
        for k, v in sd.items()
    }
    peer_sd["sub_mean.bias"] = peer_sd["add_mean.bias"] = torch.zeros(3)
    peer = superimage.flat_error(model, peer_sd)
    assert authors is not None and peer is not None
    assert authors < 1 and peer > 3 * superimage.FLAT_PICTURE / 2
    basicsr = normalize_state_dict(
        torch.load(PEERS / "basicsr-edsr" / "params_ema.pth", weights_only=True)
    )
    assert superimage.convention_by_flat_gray(basicsr)[0] == "authors"
    si = normalize_state_dict(torch.load(SI_EDSR / "pytorch_model_3x.pt", weights_only=True))
    assert superimage.convention_by_flat_gray(si)[0] == "super-image"
    untrained = edsr.build_model("edsr-baseline", scale=2).state_dict()
    assert superimage.convention_by_flat_gray(untrained)[0] == "authors"


def test_superimage_model_round_trips_through_our_safetensors(tmp_path):
    model = load_model(SI_MDSR, scale=4)
    loaded = load_model(save_model(model, tmp_path / "mdsr.safetensors"))
    assert loaded.config() == model.config()
    assert loaded.config()["pre_kernel"] == 3 and loaded.config()["res_scale"] == 0.1
    assert _max_diff(loaded, "superimage-mdsr_x4.png", 4) <= 1


def test_superimage_folder_with_several_scales_needs_one(tmp_path):
    with pytest.raises(CheckpointError, match="weights for x2, x3: choose one with --scale"):
        load_model(SI_EDSR)
    with pytest.raises(CheckpointError, match="weights for x2, x3, not x4"):
        load_model(SI_EDSR, scale=4)
    shutil.copy(SI_EDSR / "pytorch_model_2x.pt", tmp_path / "pytorch_model_3x.pt")
    with pytest.raises(CheckpointError, match="named for x3 but its upsampler is x2"):
        load_model(tmp_path / "pytorch_model_3x.pt")


def test_superimage_mdsr_with_attention_is_refused():
    with pytest.raises(CheckpointError) as e:
        load_model(PEERS / "superimage-mdsr-bam")
    assert "super-image MDSR with BAM attention blocks" in str(e.value)
    assert "edsr does not have" in str(e.value)


def _hub_cache(root, repo, folder):
    """A huggingface_hub cache holding ``folder`` as the snapshot of ``repo``, as the library
    lays it out (blobs named by hash, the snapshot linking to them, refs/main)."""
    base = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir()
    for f in folder.iterdir():
        blob = base / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(blob)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)


def test_hub_id_resolves_offline_from_the_huggingface_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    _hub_cache(tmp_path, "eugenesiow/edsr-base", SI_EDSR)
    _hub_cache(tmp_path, "eugenesiow/mdsr", SI_MDSR)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert _max_diff(load_model("eugenesiow/edsr-base", scale=3), "superimage-edsr_x3.png") <= 1
    assert _max_diff(load_model("eugenesiow/mdsr", scale=2), "superimage-mdsr_x2.png") <= 1
    with pytest.raises(CheckpointError, match="neither a file nor in the Hugging Face hub cache"):
        load_model("eugenesiow/carn", scale=2)


@pytest.mark.parametrize(
    "name",
    [
        "params_ema.pth",
        "params-ema.pth",
        "netG-prefix.pth",
        "net_g-prefix.pth",
        "generator-prefix.pth",
        "generator-entry.pth",
    ],
)
def test_trainer_wrappers_give_basicsr_pixels(name):
    model = load_model(PEERS / "basicsr-edsr" / name)
    assert _max_diff(model, "basicsr-edsr_x2.png") <= 1


def test_a_key_outside_model_and_wrapper_is_named(tmp_path):
    sd = torch.load(PEERS / "basicsr-edsr" / "netG-prefix.pth", weights_only=True)
    sd["netD.conv0.weight"] = torch.zeros(4, 3, 3, 3)
    torch.save(sd, tmp_path / "gan.pth")
    with pytest.raises(CheckpointError, match="under 'netG.' and also 'netD.conv0.weight'"):
        load_model(tmp_path / "gan.pth")
    two = {"generator": {"x.weight": torch.zeros(1)}, "critic": {"y.weight": torch.zeros(1)}}
    torch.save({"g": two["generator"], "d": two["critic"]}, tmp_path / "two.pth")
    with pytest.raises(CheckpointError, match="no model weights found.*keys g, d"):
        load_model(tmp_path / "two.pth")


def test_hub_id_without_huggingface_hub_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if absent
    with pytest.raises(CheckpointError, match=r"install the hub extra: pip install 'edsr\[hub\]'"):
        load_model("eugenesiow/edsr-base", scale=2)
