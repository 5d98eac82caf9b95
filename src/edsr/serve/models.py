"""The models one server holds: loading them once, naming them, and describing them (with what
the weights registry knows) for ``GET /v1/models`` and the page."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edsr import defaults
from edsr.errors import EdsrError
from edsr.inference import Model, describe
from edsr.models import EDSR, MDSR
from edsr.runtimes import ExportedModel
from edsr.weights import registry
from edsr.weights.registry import WeightsEntry, find_entry

#: The id under which every server offers plain (MATLAB-compatible) bicubic upscaling.
BICUBIC = "bicubic"


@dataclass
class ServedModel:
    """A loaded model and what the registry knows about it (None for an unregistered file)."""

    id: str
    model: Model
    spec: str
    entry: WeightsEntry | None

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(describe(self.model).scales)


def default_model_spec() -> str | None:
    """The registry's bundled default model, if this installation ships one."""
    try:
        return registry.default_model()
    except EdsrError:
        return None


def load_models(
    specs: Sequence[str],
    *,
    device: str | None = None,
    progress: bool = True,
    precision: str | None = None,
    run_torchscript_code: bool = False,
) -> list[ServedModel]:
    """Load each ``--model`` value once (files or registry names; comma-separated lists too),
    on ``device`` and prepared for ``precision`` (fp32, bf16, fp16, int8, auto), None meaning
    :mod:`edsr.defaults`' (the compute path ``edsr upscale`` runs). A TorchScript file is
    served only with ``run_torchscript_code`` (see :func:`edsr.weights.load_model`)."""
    from edsr.inference.precision import compute_model
    from edsr.weights import load_model

    names: list[str] = []
    for spec in specs:
        names += [s.strip() for s in spec.split(",") if s.strip()]
    if not names:  # the default route: the clean default, and the JPEG model for JPEGs
        names = [registry.default_model(), *defaults.route_models()]
    served: list[ServedModel] = []
    seen: set[str] = set()
    for spec in dict.fromkeys(names):  # keeps order, drops repeats
        path = Path(spec)
        entry = find_entry(path.name) if path.is_file() else find_entry(spec)
        plain = load_model(
            spec, device=device, progress=progress, run_torchscript_code=run_torchscript_code
        ).eval()
        model: Model = compute_model(plain, precision)
        base = entry.name if entry is not None and not path.is_file() else path.stem
        mid, n = base, 2
        while mid.lower() in seen or mid.lower() == BICUBIC:
            mid, n = f"{base}-{n}", n + 1
        seen.add(mid.lower())
        served.append(ServedModel(mid, model, spec, entry))
    return served


def load_command(models: Sequence[ServedModel], name: str) -> str:
    """The command that serves registry entry ``name`` beside the models served now: one
    ``--model`` each, as they were given, the new one last (the first stays the default)."""
    specs = dict.fromkeys([m.spec for m in models] + [name])
    return "edsr serve " + " ".join(f"--model {shlex.quote(s)}" for s in specs)


def model_listing(models: Sequence[ServedModel]) -> list[dict[str, Any]]:
    """The served models (the first is the default), bicubic, then the registry's others, each
    with the command that would serve it (``load_with``)."""
    out = [_model_info(m.id, m.entry, m.model, loaded=True, default=i == 0)
           for i, m in enumerate(models)]  # fmt: skip
    out.append(
        {
            "id": BICUBIC,
            "loaded": True,
            "default": False,
            "arch": "bicubic",
            "scales": list(bicubic_scales(models)),
            "default_scale": defaults.default_scale(bicubic_scales(models)),
            "description": "MATLAB-compatible bicubic interpolation (the baseline)",
            "psnr": [],
        }
    )
    loaded = {id(m.entry) for m in models if m.entry is not None}
    for e in registry.REGISTRY.values():
        if id(e) not in loaded:
            info = _model_info(e.name, e, None, loaded=False, default=False)
            out.append({**info, "load_with": load_command(models, e.name)})
    return out


def bicubic_scales(models: Sequence[ServedModel]) -> tuple[int, ...]:
    """Bicubic is offered at every scale some served model has, so pages can compare."""
    return tuple(sorted({s for m in models for s in m.scales}))


def _model_info(
    mid: str, entry: WeightsEntry | None, model: Model | None, *, loaded: bool, default: bool
) -> dict[str, Any]:
    d: dict[str, Any] = {"id": mid, "loaded": loaded, "default": default}
    if entry is not None:
        d.update(
            arch=entry.arch,
            scales=list(entry.scales),
            default_scale=defaults.default_scale(entry.scales),
            description=entry.description,
            parameters=entry.parameters,
            source=entry.source,
            license=entry.license,
            registry_name=entry.name,
        )
    if model is not None:
        info = describe(model)
        assert isinstance(info.module, (EDSR, MDSR, ExportedModel))  # all have config()
        cfg = info.module.config()
        d.update(
            arch=info.arch,
            scales=list(info.scales),
            default_scale=info.default_scale,
            precision=info.precision,  # the compute path it runs: --precision's names
            device=str(info.device),
            n_resblocks=cfg["n_resblocks"],
            n_feats=cfg["n_feats"],
            parameters=info.parameters,
        )
        d.setdefault("source", "file")
        d.setdefault("description", f"{info.arch.upper()} {cfg['n_resblocks']}x{cfg['n_feats']}")
    d["psnr"] = [
        {
            "dataset": m.dataset,
            "scale": m.scale,
            "psnr": m.psnr,
            "ssim": m.ssim,
            "protocol": m.protocol,
            "kind": m.kind,
            "self_ensemble": m.self_ensemble,
        }
        for m in (entry.metrics if entry is not None else ())
    ]
    return d
