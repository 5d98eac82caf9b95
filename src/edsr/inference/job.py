"""A folder job's settings, kept in its output folder, so that a re-run continues that job.

``edsr upscale holiday/ -o big/ --model mdsr-baseline --scale 3``, stopped part-way, then
``edsr upscale holiday/ -o big/ --skip-existing``: without a record the second command is a new
x4 job with the default model, whose ``*_x4.png`` land beside the ``*_x3.png``. With one, the
options left out are the folder's (:meth:`FolderJob.resume`), and an option given that is not
what the folder's job ran with is refused (:func:`check_continues`).

Why continue rather than refuse when options are left out: the command a user re-types to
finish a job is the short one, and the only job that folder can hold without mixing two models'
images is the one recorded. Why refuse rather than follow an option given: outputs of two
settings in one folder cannot be told apart by their names (``--model`` does not show in them);
``--overwrite`` says the user means to start over.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edsr import defaults
from edsr.errors import EdsrError
from edsr.io.atomic import atomic_write
from edsr.io.download import hash_matches

#: The record's name in the output folder (``edsr downscale`` keeps ``.edsr-downscale.json``).
JOB_FILE = ".edsr-upscale.json"
_VERSION = 1

#: Each setting's option on the command line, named in the messages.
OPTIONS = {
    "model": "--model",
    "scale": "--scale",
    "precision": "--precision",
    "ensemble": "--ensemble",
    "res_scale": "--res-scale",
    "degradation": "--degradation",
}


@dataclass(frozen=True)
class FolderJob:
    """The settings that decide a folder job's pixels.

    ``model`` is the registry name or the file as given, None for the default route (each
    input's model picked by :func:`edsr.defaults.route`); ``sha256`` its digest (the registry's
    hash for an entry; None for the route), so a checkpoint replaced under the same name is
    told apart. ``scale`` None: not known yet (a file's default scale is known once loaded;
    :func:`~edsr.inference.upscale_files` fills it in).

    Tiling, ``--max-memory``, the device and ``--compile`` are left out on purpose: tiles are
    exact (the output equals one whole-image pass), so they change how a job runs, not its
    result, and a re-run may pick them anew.
    """

    model: str | None = None
    sha256: str | None = None
    scale: int | None = None
    precision: str | None = None  # None: edsr.defaults.PRECISION, which resume() writes in
    ensemble: bool = False
    res_scale: float | None = None
    degradation: str | None = None

    @classmethod
    def resume(cls, recorded: FolderJob | None, given: Mapping[str, Any]) -> FolderJob:
        """The job a run does: the settings ``given`` (each field's option that was given, by
        field name: a left-out option is absent, not None), the others the ``recorded`` job's,
        else the defaults. ``sha256`` is the caller's to fill for the model it resolves."""
        unknown = set(given) - set(OPTIONS)
        if unknown:
            raise ValueError(f"not a job setting: {', '.join(sorted(unknown))}")
        base = recorded if recorded is not None else cls()
        if "model" in given or "res_scale" in given:
            base = dataclasses.replace(base, sha256=None)  # the caller's model, to be hashed
        job = dataclasses.replace(base, **given)
        if job.precision is None:  # the default now, recorded as what the job ran with
            job = dataclasses.replace(job, precision=defaults.PRECISION)
        return job

    def describe(self) -> str:
        """``model mdsr-baseline, x3``, and any setting not the default: for a line a user reads."""
        parts = ["the default route" if self.model is None else f"model {self.model}"]
        if self.scale is not None:
            parts.append(f"x{self.scale}")
        if self.precision not in (None, defaults.PRECISION):
            parts.append(str(self.precision))
        if self.ensemble:
            parts.append("ensemble")
        if self.res_scale is not None:
            parts.append(f"res-scale {self.res_scale:g}")
        if self.degradation is not None:
            parts.append(f"degradation {self.degradation}")
        return ", ".join(parts)

    def option(self, name: str) -> str:
        """One setting as the option that asks for it: ``--scale 3``, ``--ensemble``."""
        value = getattr(self, name)
        if name == "model" and value is None:
            return "no --model (the default route)"
        if isinstance(value, bool):
            return OPTIONS[name] if value else f"no {OPTIONS[name]}"
        if value is None:
            return f"no {OPTIONS[name]}"
        return (
            f"{OPTIONS[name]} {value:g}" if isinstance(value, float) else f"{OPTIONS[name]} {value}"
        )

    def same_model(self, other: FolderJob) -> bool:
        """The same model: the same digest where both are known (a file named two ways, or a
        registry entry's file given by path), else the same name (a file not found now is
        said by loading it)."""
        if self.sha256 and other.sha256:
            return hash_matches(self.sha256, other.sha256) or hash_matches(
                other.sha256, self.sha256
            )
        return self.model == other.model


def read_job(output: str | os.PathLike[str]) -> FolderJob | None:
    """The job recorded in the folder ``output``; None where there is none (a new folder, a
    file name, a record damaged or of another version: the next job writes it anew)."""
    try:
        data = json.loads((Path(output) / JOB_FILE).read_text())
        if not isinstance(data, dict) or data.pop("version", None) != _VERSION:
            return None
        job = FolderJob(**data)
        if job.scale is not None and not isinstance(job.scale, int):
            return None
        return job
    except (OSError, ValueError, TypeError):
        return None


def write_job(output: str | os.PathLike[str], job: FolderJob) -> None:
    """Record ``job`` in the folder ``output``, atomically (a killed run leaves the old record
    or the new one, never half of one)."""
    payload = {"version": _VERSION, **dataclasses.asdict(job)}
    with atomic_write(Path(output) / JOB_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")


def check_continues(
    recorded: FolderJob | None, job: FolderJob, output: str | os.PathLike[str]
) -> None:
    """Refuse ``job`` into ``output`` when the folder holds another job's outputs: one line
    naming both settings and the two ways on (``--overwrite`` to start over, or leaving the
    option out to continue). A setting ``job`` has not decided yet (None scale) is no conflict."""
    if recorded is None:
        return
    where = os.fspath(output)
    if recorded.model == job.model and not recorded.same_model(job):
        raise EdsrError(
            f"{job.model} has changed since the job in {where} started (sha256 "
            f"{(recorded.sha256 or '?')[:8]}, now {(job.sha256 or '?')[:8]}); pass --overwrite "
            "to start that job over with it"
        )
    differ = [
        name
        for name in OPTIONS
        if (
            not recorded.same_model(job)
            if name == "model"
            else getattr(recorded, name) != getattr(job, name)
        )
        and not (name == "scale" and job.scale is None)
    ]
    if differ:
        ran = ", ".join(recorded.option(n) for n in differ)
        asks = ", ".join(job.option(n) for n in differ)
        drop = " and ".join(OPTIONS[n] for n in differ)
        raise EdsrError(
            f"{where} holds a job run with {ran} ({JOB_FILE}); this one has {asks}: pass "
            f"--overwrite to start over, or leave out {drop} to continue that job"
        )
