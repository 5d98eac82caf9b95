"""The default route: the model each input gets when the user names none.

The rule is :func:`edsr.defaults.route` (a JPEG goes to the JPEG-aware model for its quality
band, everything else to the clean default); this room applies it to files, Pillow images and
arrays, and loads each model it picks once. Every door without ``--model`` goes through it:
``edsr upscale``, :func:`upscale` (``edsr.upscale``), the server and the demo.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from edsr import defaults
from edsr.degrade import jpeg_quality
from edsr.errors import EdsrError
from edsr.inference import ImageLike, Model
from edsr.inference import upscale as run_upscale
from edsr.weights import load_model
from edsr.weights.registry import default_model, get_entry

__all__ = ["Router", "upscale"]


class Router:
    """The default route on one device: ``router(path)`` is ``(model, why)`` for that file
    (:class:`edsr.inference.files.ModelChoice`), each model loaded on first use and kept."""

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        scale: int | None = None,
        progress: bool = True,
        degradation: str | None = None,
    ) -> None:
        """``degradation`` says what every input is (``jpeg`` or ``clean``), in place of
        what each file's type says."""
        self.device, self.scale, self.progress = device, scale, progress
        self.degradation = degradation
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()

    def name(self, name: str | None) -> str:
        return name or default_model()

    def model(self, name: str | None) -> Model:
        key = self.name(name)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(
                    key, scale=self.scale, device=self.device, progress=self.progress
                )
            return self._models[key]

    @property
    def default(self) -> Model:
        return self.model(None)

    @property
    def scales(self) -> tuple[int, ...]:
        """The scales every model of the route has (the registry says; nothing is loaded)."""
        every = [get_entry(self.name(n)).scales for n in (None, *defaults.route_models())]
        return tuple(s for s in every[0] if all(s in other for other in every[1:]))

    def choose(
        self, source: str | os.PathLike[str] | Image.Image | None, degradation: str | None = None
    ) -> tuple[str, str]:
        """``(model name, why)`` for an input: a file, a Pillow image (opened from a JPEG, it
        carries its tables), or None (an array: only ``degradation`` can say)."""
        quality = None
        degradation = degradation or self.degradation
        if degradation is None and source is not None:
            quality = jpeg_quality(source)
        try:
            name, why = defaults.route(quality, degradation)
        except ValueError as e:
            raise EdsrError(str(e)) from None
        return self.name(name), why

    def __call__(self, path: Path) -> tuple[Model, str]:
        name, why = self.choose(path)
        return self.model(name), f"{name}: {why}"


_ROUTERS: dict[str, Router] = {}
_ROUTERS_LOCK = threading.Lock()


def _router(device: str | torch.device | None) -> Router:
    key = defaults.resolve_device(None if device is None else str(device))
    with _ROUTERS_LOCK:
        return _ROUTERS.setdefault(key, Router(device=key, progress=False))


def upscale(
    image: ImageLike,
    model: Model | None = None,
    scale: int | None = None,
    *,
    degradation: str | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> ImageLike:
    """Upscale ``image`` (PIL, numpy or torch) with ``model``, or, without one, with the model
    the default route picks (:func:`edsr.defaults.route`): a Pillow image opened from a JPEG
    below quality :data:`edsr.defaults.JPEG_CLEAN_QUALITY` gets the JPEG-aware model for its
    quality, anything else the clean default; an array says what it is with
    ``degradation="jpeg"`` (or ``"clean"``, the default). The route's models are loaded once
    per ``device`` and kept.

    Everything else is :func:`edsr.inference.upscale`'s (``value_range``, ``tile``,
    ``max_memory``, ``ensemble``, ``precision``, ``on_tile``, ``should_stop``).
    """
    if model is None:
        router = _router(device)
        source = image if isinstance(image, Image.Image) else None
        name, _ = router.choose(source, degradation)
        model = router.model(name)
    elif degradation is not None:
        raise EdsrError(
            "degradation picks the default route's model; leave it out when you give a model"
        )
    elif device is not None:
        raise EdsrError("device is where the default route loads its models; move yours with .to")
    return run_upscale(image, model, scale, **options)
