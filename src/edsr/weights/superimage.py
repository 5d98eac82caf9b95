"""super-image's EDSR and MDSR files (the ``eugenesiow/*`` models on the Hugging Face hub), read
into the authors' layout, exactly.

super-image keeps the authors' EDSR key names (its MDSR's differ), but its models work on
images in 0..1 and never apply the mean shift they store: ``forward`` is the network without
``sub_mean``/``add_mean``. The same function on 0..255 images is the network with every conv
bias times 255 (a ReLU network without biases is positively homogeneous) and an identity mean
shift, i.e. a zero mean: what :func:`from_superimage` writes. Folding the DIV2K mean into the
biases instead is not exact: the head conv's zero padding sees the mean only inside the image.

``save_pretrained`` writes a folder: ``config.json`` and one ``pytorch_model_{scale}x.pt`` per
scale (``pytorch_model.pt`` when saved without one).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edsr.errors import CheckpointError, one_line
from edsr.models import SRModel, model_from_config
from edsr.validators import MAX_RES_SCALE, finite_float
from edsr.weights.convert import StateDict
from edsr.weights.detect import detect_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = re.compile(r"^pytorch_model(?:_(\d+)x)?\.pt$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_ARCHS = {"EDSR": "edsr", "MDSR": "mdsr"}
# Fixed in super-image's MdsrModel, whatever its config says.
MDSR_RES_SCALE = 0.1
# A model that moves a flat gray by more than this (gray levels) makes no picture that way;
# measured: the bundled MDSR 0.4 its way and 30 the other, trained tiny fixtures 4-8 against
# 15-224, untrained models 90-370 both ways.
FLAT_PICTURE = 16.0


def config_beside(weights: Path) -> dict[str, Any] | None:
    """super-image's ``config.json`` beside the file ``weights``; None when there is none, or
    it is another project's. Beside a file named as ``save_pretrained`` names it, the config
    is that file's: one that is not a super-image config (an object with a model_type) is
    refused as damaged."""
    path = weights.parent / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file ({one_line(e)})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        if WEIGHTS_NAME.match(weights.name):
            raise CheckpointError(
                f"{path} is not a super-image config (a JSON object with a model_type) but "
                f"{weights.name} beside it is named as super-image names its weights; the "
                "folder is damaged: download it again"
            )
        return None  # some other project's config: not evidence either way
    kind = cfg["model_type"]
    if not isinstance(kind, str):
        raise CheckpointError(f"{path}: its model_type is {kind!r}, not a model name")
    if kind.upper() not in _ARCHS:
        raise CheckpointError(
            f"{path} describes a super-image {kind} model; edsr reads its EDSR and MDSR models only"
        )
    return cfg


def weights_in_folder(folder: Path, scale: int | None) -> Path | None:
    """The weights file for ``scale`` in a super-image folder; None when it holds none."""
    files: dict[int | None, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and (m := WEIGHTS_NAME.match(p.name)):
            files[int(m.group(1)) if m.group(1) else None] = p
    if not files:
        return None
    have = ", ".join(f"x{s}" for s in files if s is not None)
    if scale is not None:
        if scale in files:
            return files[scale]
        if None in files:
            return files[None]  # scale unknown by name: the shapes tell, and are checked
        raise CheckpointError(
            f"{folder} holds super-image weights for {have}, not x{scale}; choose one of those"
        )
    if len(files) == 1:
        return next(iter(files.values()))
    raise CheckpointError(
        f"{folder} holds super-image weights for {have}: choose one with --scale (scale= in Python)"
    )


def hub_id(path: Path) -> str | None:
    """``path`` read as a Hugging Face hub id (``eugenesiow/edsr-base``), if it can be one."""
    text = path.as_posix()
    return text if _HUB_ID.match(text) and path.suffix.lower() not in (".pt", ".pth") else None


def hub_folder(repo_id: str, scale: int | None) -> Path:
    """The snapshot folder of ``repo_id`` in the huggingface_hub cache, downloading what is
    missing (the weights of ``scale`` only, when given) unless ``HF_HUB_OFFLINE`` is set."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise CheckpointError(
            f"checkpoint {repo_id} does not exist; to load it as a Hugging Face hub id, "
            "install the hub extra: pip install 'edsr[hub]'"
        ) from None
    weights = [f"pytorch_model_{scale}x.pt", "pytorch_model.pt"] if scale else ["pytorch_model*"]
    try:
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, *weights])
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id} is neither a file nor in the Hugging Face hub cache, and the hub cannot "
            "be reached (HF_HUB_OFFLINE set, or no network); download it once online"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id} is neither a file nor a Hugging Face hub model") from None
    except Exception as e:  # noqa: BLE001 - network and cache errors come in many types
        raise CheckpointError(f"cannot fetch {repo_id} from the hub: {one_line(e)}") from None
    return Path(folder)


def is_superimage_mdsr(sd: Mapping[str, torch.Tensor]) -> bool:
    """super-image's MDSR wraps every conv in a Sequential: ``head.0.0.weight``."""
    return "head.0.0.weight" in sd


def evidence(path: Path, sd: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``path`` is a super-image file (its config beside it, its name, its MDSR key
    names); None when nothing says so."""
    if config_beside(path) is not None:
        return f"{CONFIG_NAME} beside it"
    if WEIGHTS_NAME.match(path.name):
        return "its file name"
    if is_superimage_mdsr(sd):
        return "its MDSR key names"
    return None


def _rename_mdsr(sd: StateDict, source: str) -> tuple[StateDict, int]:
    """super-image MDSR keys to ours: one Sequential level less, branches by index not scale."""
    scales = {k.split(".")[1] for k in sd if k.startswith("upsample.")}
    if len(scales) != 1 or not next(iter(scales)).isdigit():
        raise CheckpointError(
            f"{source}: super-image MDSR files hold one scale each; found upsamplers {scales}"
        )
    scale = next(iter(scales))
    out: StateDict = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] in ("pre_process", "upsample") and parts[1] == scale:
            parts[1] = "0"
        if parts[0] != "sub_mean" and parts[0] != "add_mean" and parts[-2] == "0":
            del parts[-2]  # the Sequential around every conv
        out[".".join(parts)] = v
    return out, int(scale)


def from_superimage(
    sd: StateDict, cfg: Mapping[str, Any] | None, *, name: str, source: str
) -> tuple[StateDict, dict[str, Any]]:
    """(our state dict, our config) of a super-image EDSR or MDSR: biases x255, zero mean.

    What edsr reads of ``cfg`` is checked here: its flags are true or false, its res_scale a
    number, and the sizes it gives are the tensors' (its other keys are not read)."""
    cfg = dict(cfg or {})
    kind = str(cfg.get("model_type", "")).upper()
    for flag in ("bam", "no_upsampling"):
        if not isinstance(cfg.get(flag, False), bool):
            raise CheckpointError(
                f"{source}: its {CONFIG_NAME} says {flag} = {cfg[flag]!r}, "
                "not true or false; the config is damaged"
            )
    if "res_scale" in cfg:
        cfg["res_scale"] = finite_float(
            cfg["res_scale"], f"{source}: its {CONFIG_NAME}'s res_scale", maximum=MAX_RES_SCALE
        )
    if cfg.get("bam") or any(".attention." in k for k in sd):
        raise CheckpointError(
            f"{source} is a super-image MDSR with BAM attention blocks (mdsr-bam), an "
            "architecture edsr does not have; use the plain MDSR (eugenesiow/mdsr)"
        )
    if cfg.get("no_upsampling"):
        raise CheckpointError(f"{source} is a super-image EDSR without upsampler: not a model")
    mdsr = is_superimage_mdsr(sd)
    if kind and _ARCHS[kind] != ("mdsr" if mdsr else "edsr"):
        raise CheckpointError(
            f"{source}: its {CONFIG_NAME} says {kind} but its tensors are "
            f"{'MDSR' if mdsr else 'EDSR'}; the config belongs to another file"
        )
    sd = dict(sd)
    if mdsr:
        sd, _ = _rename_mdsr(sd, source)
    n_colors = int(sd["head.0.weight"].shape[1]) if "head.0.weight" in sd else 3
    eye = torch.eye(n_colors).view(n_colors, n_colors, 1, 1)
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith(("sub_mean.", "add_mean.")):
            continue  # stored by super-image, never applied: replaced by the identity
        out[k] = v * 255 if k.endswith(".bias") else v
    for shift in ("sub_mean", "add_mean"):
        out[f"{shift}.weight"], out[f"{shift}.bias"] = eye.clone(), torch.zeros(n_colors)
    # The identity mean shifts read as a zero mean, the 3x3 pre-process as super-image's MDSR.
    config = detect_config(out, res_scale=None if mdsr else cfg.get("res_scale"))
    if mdsr:  # its blocks scale by 0.1 whatever the pre-process kernel
        config["res_scale"] = MDSR_RES_SCALE
    for key in ("n_resblocks", "n_feats", "n_colors"):  # claims: the tensors are the facts
        if key in cfg and cfg[key] != config[key]:
            raise CheckpointError(
                f"{source}: its {CONFIG_NAME} says {key} = {cfg[key]!r}, its tensors hold "
                f"{config[key]!r}; the config belongs to another file, or is damaged"
            )
    named = WEIGHTS_NAME.match(name)
    has = config["scales"] if mdsr else [config["scale"]]
    if named and named.group(1) and int(named.group(1)) not in has:
        raise CheckpointError(
            f"{source} is named for x{named.group(1)} but its upsampler is x{has[0]}: "
            "renamed or mixed up; give the file its right name"
        )
    return out, config


def as_superimage(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, dict[str, Any]]:
    """An authors'-layout EDSR state dict read the super-image way (biases x255, zero mean)."""
    return from_superimage(dict(sd), None, name="", source="")


def flat_gray_model(config: Mapping[str, Any]) -> SRModel:
    """A model for :func:`flat_error`: its convolutions pad circularly, so a tiny flat image
    stands for an endless one (no border), milliseconds even for the 32x256 EDSR."""
    model = model_from_config(dict(config)).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "circular"
    return model


@torch.no_grad()
def flat_error(model: SRModel, sd: Mapping[str, torch.Tensor]) -> float | None:
    """How far (gray levels) ``model`` (a :func:`flat_gray_model`) with the weights ``sd``
    moves flat grays of 64, 128 and 192; None when ``sd`` does not fit it.

    A trained super-resolution model keeps a flat region flat and its gray unchanged; read in
    the wrong convention (0..1 weights fed 0..255, or the reverse) it is off by tens of levels.
    """
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError:
        return None
    grays = torch.tensor([64.0, 128.0, 192.0]).view(3, 1, 1, 1)
    size = max(2, getattr(model, "pre_kernel", 3) // 2)  # circular padding wraps at most once
    x = grays.expand(3, model.n_colors, size, size).contiguous()
    return max(float((model(x, s) - grays).abs().max()) for s in model.scales)


def convention_by_flat_gray(sd: StateDict) -> tuple[str | None, float, float]:
    """(convention, error read the authors' way, error read super-image's way) of an
    authors'-layout EDSR state dict, errors from :func:`flat_error`.

    The convention is the one whose error is at most :data:`FLAT_PICTURE` and a third of the
    other's; ``"authors"`` also when neither makes a picture (an untrained model: no reading
    makes it right, and the keys are the authors'); None when both come close (a weakly
    trained model), which cannot be told apart.
    """
    try:
        model = flat_gray_model(detect_config(sd))  # one model, both readings: a mean of 0
        authors = flat_error(model, sd)  # or DIV2K is only the mean shift's loaded bias
        peer = flat_error(model, as_superimage(sd)[0])
    except CheckpointError:
        return "authors", math.nan, math.nan  # the strict load says what is wrong
    if authors is None or peer is None:
        return "authors", math.nan, math.nan
    low = min(authors, peer)
    if low > FLAT_PICTURE:
        return "authors", authors, peer
    if max(authors, peer) >= 3 * low:
        return ("authors" if authors == low else "super-image"), authors, peer
    return None, authors, peer
