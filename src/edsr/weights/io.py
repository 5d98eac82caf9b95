"""Checkpoint files: reading official ``.pt`` files, foreign layouts and our safetensors (every
file that becomes a model passes :func:`read_checkpoint`), building the model they hold, and
writing our own format."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from edsr.errors import CheckpointError, EdsrError, one_line
from edsr.io.atomic import atomic_open
from edsr.models import SRModel, model_from_config
from edsr.models.common import DIV2K_RGB_MEAN
from edsr.weights import superimage
from edsr.weights.convert import (
    StateDict,
    fill_authors_mean,
    lacks_mean,
    normalize_state_dict,
)
from edsr.weights.detect import detect_config

FORMAT_NAME = "edsr"
FORMAT_VERSION = "1"
_SAFETENSORS_MAGIC_MAX = 100_000_000  # a header longer than this is not a safetensors file


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < _SAFETENSORS_MAGIC_MAX and head[8:9] == b"{"


#: What ``--model`` (and ``load_model``) accepts, for messages about a file that is none of it.
MODEL_ACCEPTS = (
    "--model takes a name from 'edsr weights list', a checkpoint (.pt, .pth, .safetensors) or "
    "an ONNX or TorchScript file written by 'edsr export'"
)
# The ONNX ModelProto's first fields on the wire: ir_version (1, a varint), then producer_name
# (2), ..., graph (7) or opset_import (8), each a length-delimited field.
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42}


def file_kind(path: str | os.PathLike) -> str:
    """What a model file is, from its first bytes: ``safetensors``, ``pytorch`` (torch.save's
    zip or pickle, possibly damaged), ``onnx``, ``torchscript``, or a description of something
    else (``text``, ``zip archive``, ...) for a message."""
    path = Path(path)
    if _looks_like_safetensors(path):
        return "safetensors"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "pytorch"  # a cut-off torch.save file; torch.load says "truncated"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "pytorch"
        return "zip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pytorch"  # torch.save's legacy pickle format
    if len(head) > 2 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_NEXT_TAGS:
        return "onnx"
    for magic, kind in (
        (b"\x1f\x8b", "gzip archive"),
        (b"\x89HDF", "HDF5 file (Keras weights?)"),
        (b"\x93NUMPY", "numpy array file"),
        (b"\x89PNG", "PNG image"),
        (b"\xff\xd8\xff", "JPEG image"),
        (b"7z\xbc\xaf", "7z archive"),
        (b"Rar!", "RAR archive"),
    ):
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar archive"
    if head and b"\x00" not in head:
        try:
            text = head.decode("utf-8").lstrip().lower()
        except UnicodeDecodeError:
            return "unrecognised binary data"
        if text.startswith(("<!doctype html", "<html")):
            return "HTML page (a failed download?)"
        if text.startswith(("{", "[")):
            return "JSON text"
        return "text"
    return "unrecognised binary data"


def read_checkpoint(
    path: str | os.PathLike,
    *,
    scale: int | None = None,
    authors: bool = False,
    accepts: str = MODEL_ACCEPTS,
) -> tuple[StateDict, dict | None, dict[str, str]]:
    """Return (official-layout state dict, embedded config or None, safetensors metadata).

    ``path`` may also be a super-image folder or Hugging Face hub id (``scale`` picks its
    weights file); a super-image file comes back converted, with the config it needs.
    ``authors``: the file is known to be in the authors' convention (a registry entry,
    hash-checked), so it is not :func:`_decide_convention`'s to judge. ``accepts`` ends the
    message about a file of another kind: what the caller takes.
    """
    path = Path(path)
    if not path.exists() and (repo := superimage.hub_id(path)):
        path = superimage.hub_folder(repo, scale)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        weights = superimage.weights_in_folder(path, scale)
        if weights is None:
            raise CheckpointError(f"checkpoint {path} is a directory; give the weights file")
        path = weights
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); download it again")
    kind = file_kind(path)
    if kind in ("onnx", "torchscript"):
        raise CheckpointError(
            f"{path} is an exported {'ONNX' if kind == 'onnx' else 'TorchScript'} graph, not a "
            "checkpoint: --model and load_model run it, but to convert or export, start from "
            "the checkpoint it was exported from"
        )
    if kind not in ("safetensors", "pytorch"):
        raise CheckpointError(f"{path} looks like {_article(kind)}, not a model; {accepts}")
    if kind == "safetensors":
        try:
            sd = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {path} is a damaged safetensors file ({e})"
            ) from None
        config = None
        ours = meta.get("format") == FORMAT_NAME
        if ours and meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} is in edsr's format version {meta['format_version']!r}; "
                f"this edsr reads version {FORMAT_VERSION}: upgrade edsr to read it"
            )
        if ours and "config" in meta:
            try:
                config = json.loads(meta["config"])
            except (json.JSONDecodeError, RecursionError):  # nested past Python's stack
                raise CheckpointError(f"checkpoint {path} has a corrupt embedded config") from None
        return _finite(fill_authors_mean(normalize_state_dict(sd)), path), config, meta
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before failing; the failure says it all.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text:
            found = re.search(r"Unsupported (?:global|class): (?:GLOBAL )?([\w.]+)", text)
            found = found or re.search(r"(Unsupported operand \d+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"refused to load {path}: it holds pickled Python objects{what} that only "
                "arbitrary code could load; if you trust the file, re-save only its tensors with "
                "torch.save(model.state_dict(), ...)"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch or safetensors file"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for damaged files
        msg = one_line(e, limit=160)
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch or safetensors file, or truncated "
            f"({msg})"
        ) from None
    sd = _finite(normalize_state_dict(obj), path)
    return (fill_authors_mean(sd), None, {}) if authors else _decide_convention(sd, path)


def _decide_convention(sd: StateDict, path: Path) -> tuple[StateDict, dict | None, dict[str, str]]:
    """A pickle with the authors' key names is theirs (0..255, DIV2K mean) or super-image's
    (0..1, no mean shift): the same keys, pictures 120 gray levels apart. Decided by its
    config beside it or its name, else by which convention keeps a flat gray flat."""
    why = superimage.evidence(path, sd)
    if why is None and lacks_mean(sd):
        return fill_authors_mean(sd), None, {}
    if why is None and "tail.1.weight" in sd and "sub_mean.bias" in sd:
        convention, authors, peer = superimage.convention_by_flat_gray(sd)
        if convention is None:
            raise CheckpointError(
                f"{path} has the authors' EDSR key names, but whether it is theirs (0..255 "
                f"images, DIV2K mean) or super-image's (0..1, no mean shift) its weights do not "
                f"tell (a flat gray moves {authors:.0f} vs {peer:.0f} levels); if it is "
                "super-image's, put its config.json beside it or name it pytorch_model_<S>x.pt "
                "(S its scale); if the authors', save it without its sub_mean/add_mean tensors"
            )
        if convention == "super-image":
            why = "its weights (they keep a flat gray only on 0..1 images)"
    if why is None:
        return sd, None, {}
    cfg = superimage.config_beside(path)
    try:
        sd, config = superimage.from_superimage(sd, cfg, name=path.name, source=str(path))
    except KeyError as e:
        raise CheckpointError(
            f"{path} looks like a super-image file ({why}) but lacks tensor {e}"
        ) from None
    return sd, config, {"convention": f"super-image, by {why}"}


def _article(kind: str) -> str:
    if kind.endswith(("text", "data")):
        return kind
    return ("an " if kind[0] in "aeiouAEIOUH" else "a ") + kind


def _finite(sd: StateDict, path: Path) -> StateDict:
    """``sd``, refused if a tensor holds NaN or infinity (such weights turn every image black)
    or whole numbers (no trained weights are: the file is something else)."""
    for key, tensor in sd.items():
        if not tensor.is_floating_point():
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise CheckpointError(
                f"checkpoint {path} holds tensor {key} as {dtype}, not floating point: these "
                "are not a model's weights"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            what = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            raise CheckpointError(
                f"checkpoint {path} holds {what} values in tensor {key}: the weights are "
                "damaged (a diverged or interrupted training run?); use another checkpoint"
            )
    return sd


def _first_keys(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")


def _check_strict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], config: dict, source: str
) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s) ({_first_keys(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s) ({_first_keys(unexpected)})")
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatch(es) (first {k}: file {got[k]}, model {expected[k]})"
        )
    hint = "the file is truncated or from another architecture"
    if mismatched and not (missing or unexpected):
        hint = (
            "the embedded config does not match the tensors; "
            "re-import the file with 'edsr weights import'"
        )
    elif unexpected and not missing:
        hint = "the file has extra layers: it is probably not an EDSR/MDSR checkpoint"
    desc = f"{config['arch'].upper()} {config.get('n_resblocks')}x{config.get('n_feats')}"
    raise CheckpointError(f"{source} does not match {desc}: {'; '.join(parts)}; {hint}")


def model_from_state_dict(
    sd: Mapping[str, torch.Tensor],
    *,
    config: dict | None = None,
    res_scale: float | None = None,
    source: str = "checkpoint",
) -> SRModel:
    """Build the model ``config`` describes (else detected from shapes); load ``sd`` strictly.

    A given config is a claim and the tensors are the facts: its size (architecture, blocks,
    features, colours, scales) is checked against the shapes before anything is built, so a
    config that lies (``n_resblocks: 10**7`` beside a 16-block file) is one line, not gigabytes.
    """
    if config is None:
        config = detect_config(sd, res_scale=res_scale)
    else:
        _check_claims(config, sd, source)
        if res_scale is not None:
            config = {**config, "res_scale": float(res_scale)}
    try:
        model = model_from_config(config)
    except EdsrError as e:  # the config's value is the file's: name it
        raise CheckpointError(f"{source}: {e}") from None
    _check_strict(model, sd, config, source)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


_SIZE_KEYS = ("arch", "n_resblocks", "n_feats", "n_colors")
_SIZE_NAMES = (*_SIZE_KEYS, "scales", "pre_kernel")


def _size(config: Mapping[str, Any]) -> tuple:
    """What of ``config`` the tensors' shapes show, compared as is: a scale 2.5 or "2" is not
    the 2 the upsampler holds."""
    mdsr = config.get("arch") == "mdsr"
    scales: Any = config.get("scales") if mdsr else [config.get("scale")]
    try:
        held: tuple | None = tuple(sorted(scales or ()))
    except TypeError:  # not a list, or of things that do not compare
        held = None
    # MDSR's pre-process kernel is in the shapes too; its configs leave out the authors' 5
    pre_kernel = config.get("pre_kernel", 5) if mdsr else None
    return (*(config.get(k) for k in _SIZE_KEYS), held, pre_kernel)


def _check_mean(config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str) -> None:
    """The mean shift a config claims (``rgb_range`` times ``rgb_mean``) against the one the
    file holds (``sub_mean.bias``)."""
    bias = sd.get("sub_mean.bias")
    if bias is None:
        return
    rgb_range, rgb_mean = config.get("rgb_range", 255.0), config.get("rgb_mean", DIV2K_RGB_MEAN)
    try:
        implied = -float(rgb_range) * torch.tensor(
            [float(m) for m in rgb_mean], dtype=torch.float64
        )
    except (TypeError, ValueError, OverflowError):
        implied = None
    if (
        implied is None
        or implied.shape != bias.shape
        or not torch.allclose(implied, bias.double(), rtol=1e-3, atol=1e-3)
    ):
        raise CheckpointError(
            f"{source}: its config says rgb_range = {rgb_range!r}, rgb_mean = {rgb_mean!r}, its "
            f"mean shift holds {[round(float(b), 4) for b in bias.flatten()[:4]]}; the config "
            "does not describe these weights (damaged or edited)"
        )


def _check_claims(config: object, sd: Mapping[str, torch.Tensor], source: str) -> None:
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"{source}: its model config is {type(config).__name__}, not an object; "
            "the file is damaged, or give a checkpoint without it"
        )
    facts = detect_config(sd)
    claimed, held = _size({**facts, **config}), _size(facts)
    if claimed != held:
        diff = next(i for i, (a, b) in enumerate(zip(claimed, held, strict=True)) if a != b)
        raise CheckpointError(
            f"{source}: its config says {_SIZE_NAMES[diff]} = {claimed[diff]!r}, its tensors "
            f"hold {held[diff]!r}; the config does not describe these weights (damaged or edited)"
        )
    _check_mean(config, sd, source)


def save_model(
    model: SRModel,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save ``model`` as self-describing safetensors (config in the header), atomically.

    ``dtype=torch.float16`` halves the file; the mean-shift constants stay float32 because
    fp16 would move them by up to 0.01 gray levels.
    """
    path = Path(path)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and not k.startswith(("sub_mean.", "add_mean.")):
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config()),
    }
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    # Serialised here and written through atomic_open: safetensors' save_file replaces the
    # file it is given with its own temporary file (mode 0600, a name no cleanup knows).
    data = safetensors_bytes(tensors, metadata=meta)
    with atomic_open(path, overwrite=overwrite) as f:
        f.write(data)
    return path
