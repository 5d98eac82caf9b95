"""Files are data: every door that reads a file, fed hostile files made from what it expects.

Deterministic generators derive the files from the real ones: a training config's keys from
:class:`~edsr.training.config.TrainConfig`'s fields and types, a recipe's stage from the same
keys and the recipe's own structure, a model config's keys from an honest file's config (our
safetensors, a super-image ``config.json``), an exported graph's metadata from a real export,
and byte-level damage (truncation, a lying header length, non-UTF-8). Each case goes through
every door that reads its kind:

==================  ===========================================================================
training config     ``edsr train --config FILE``; ``edsr train --resume DIR`` (its config.toml)
recipe              ``edsr train --recipe FILE --dry-run``; ``--resume DIR --dry-run``
safetensors         ``edsr upscale``/``eval``/``export``/``weights import``/``demo``;
                    ``edsr.load_model`` and a run; ``edsr.serve.load_models`` (``serve --model``);
                    ``init_from`` (``train --init-from``)
super-image folder  the same doors, the folder as the model
ONNX                the same but ``weights import`` (a graph is not a checkpoint)
TorchScript         the same, opted in with ``--run-torchscript-code``
==================  ===========================================================================

Every case must end as a refusal (exit 1 or 2, one line on stderr, no internal error, no
traceback) that writes nothing; in Python, an EdsrError or ValueError of one line. Each door's
base case (the honest file) is shown to work, so a refusal is the hostile value's doing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import math
import shutil
import struct
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import edsr
from conftest import DATA, crop_set
from edsr import EdsrError, save_model
from edsr.training.config import TrainConfig
from hostile import hostile_env, refusal_problem, remove_new, run_cli, snapshot
from sr_helpers import small_edsr, small_mdsr

PEERS = DATA / "peers"

# --- generators --------------------------------------------------------------------------------

# TOML texts a key of each type must refuse (whole numbers, numbers, text, flags, lists).
_TOML_BY_TYPE: dict[object, list[str]] = {
    int: ["nan", "inf", "-inf", "-1", str(10**30), "1.5", '"3"', "true", "[]", "{ a = 1 }"],
    float: ["nan", "inf", "-inf", "-1.0", str(10**400), '"0.1"', "true", "[]", "{ a = 1 }"],
    str: ["5", "1.5", "true", "[]", '["a"]', "{ a = 1 }", '"\\u0000"'],
    bool: ["1", '"yes"', "[]", "nan", "{ a = 1 }"],
    list[int]: ["[]", "[0]", "[-2]", f"[{10**30}]", '["2"]', "[[2]]", "[{ a = 1 }]", "2.5", '"x"'],
    list[str]: ["[]", "[5]", "[[]]", '[""]', '["\\u0000"]', "{ a = 1 }", "5"],
}
# Per key, what its type's list misses (a path that cannot be, a name that is none).
_TOML_EXTRA: dict[str, list[str]] = {
    "preset": ['""', '"edsr-huge"'],
    "out": ['""', '"/proc/nope"'],
    "cache_dir": ['""', '"/proc/nope"'],
    "init_from": ['""', '"/etc/passwd"', '"no-such-model.pt"'],
    "val": ['""', '"no-such-set"'],
    "degrade": ['""', '"jpeg:0"', '"blur"'],
    "val_degrade": ['""', '"jpeg:1e30"'],
    "precision": ['"fp8"'],
    "lr_schedule": ['"linear"'],
    "on_bad_image": ['"ignore"'],
    "lr": ["2.0", "0.0"],
    "lr_decay_factor": ["1.5"],
    "lr_min": ["1.0"],
    "adam_beta1": ["1.0"],
    "adam_beta2": ["1.0"],
    "patch_size": ["5000"],
    "batch_size": ["1000000000"],
    "seed": [str(2**32)],
    "workers": ["100000"],
}
# A key's type list value that is a good value for it.
_TOML_VALID = {("train", "5"), ("seed", "-1.0")}


def _hint_kind(hint: object) -> object:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint


def config_key_cases() -> list[tuple[str, str]]:
    """(key, TOML value) for every :class:`TrainConfig` key: its type's hostile values and its
    own; plus keys that are none of its (unknown, a table where a value goes)."""
    hints = typing.get_type_hints(TrainConfig)
    cases = []
    for f in dataclasses.fields(TrainConfig):
        values = _TOML_BY_TYPE[_hint_kind(hints[f.name])] + _TOML_EXTRA.get(f.name, [])
        cases += [(f.name, v) for v in values if (f.name, v) not in _TOML_VALID]
    return cases + [("foo", "1"), ("iters.sub", "1")]


def _toml_file(values: dict[str, str]) -> bytes:
    return "".join(f"{k} = {v}\n" for k, v in values.items()).encode()


# The run a hostile config changes one key of: it trains (1 step) when nothing is wrong.
BASE_CONFIG = {
    "preset": '"edsr-baseline"',
    "scales": "[2]",
    "train": '["set"]',
    "out": '"run"',
    "iters": "1",
    "patch_size": "8",
    "batch_size": "1",
    "val_every": "1",
    "checkpoint_every": "1",
}


def config_files() -> list[tuple[str, bytes]]:
    """Hostile training configs: one key each, and damaged files around the base."""
    cases = [
        (f"{k}={v}", _toml_file({**BASE_CONFIG, k: v}))
        for k, v in config_key_cases()
        if not k.startswith("iters.")
    ]
    base = _toml_file(BASE_CONFIG)
    cases += [
        ("dotted", _toml_file({**BASE_CONFIG, "iters": "{ sub = 1 }"})),
        ("table-header", base.replace(b"iters = 1\n", b"") + b"[iters]\nsub = 1\n"),
        ("train-table", b"[train]\n" + base.replace(b"iters = 1", b"iters = -1")),
        ("array-of-tables", base.replace(b"iters = 1\n", b"") + b"[[iters]]\n"),
        ("non-utf8", base + b'degrade = "\xff\xfe"\n'),
        ("nul-byte", base + b"\x00\n"),
        ("bom", b"\xef\xbb\xbf" + base),
        ("truncated", base + b"degrade = [1, 2"),
        ("truncated-string", base + b'degrade = "clean'),
        ("duplicate-key", base + b"iters = 2\n"),
        ("binary", bytes(range(256))),
    ]
    return cases


_STAGE = {
    "name": '"a"',
    "preset": '"edsr-baseline"',
    "scales": "[2]",
    "train": '["Set5"]',
    "iters": "1",
    "patch_size": "8",
    "batch_size": "1",
}


def _recipe(stage: dict[str, str], head: str = 'name = "fuzz"\n') -> bytes:
    return (head + "[[stage]]\n").encode() + _toml_file(stage)


def recipe_files() -> list[tuple[str, bytes]]:
    """Hostile recipes: every config key in a stage, and a recipe's own keys and structure."""
    cases = [
        (f"stage.{k}={v}", _recipe({**_STAGE, k: v}))
        for k, v in config_key_cases()
        if k not in ("out", "init_from")  # set by the recipe: refused whatever the value
    ]
    cases += [(f"stage.init={v}", _recipe({**_STAGE, "init": v})) for v in (
        '"/etc/passwd"', '"previous"', "5", "[]", '"no-such-model"', "{ a = 1 }",
    )]  # fmt: skip
    cases += [(f"stage.save_as={v}", _recipe({**_STAGE, "save_as": v})) for v in ("5", '"fp8"')]
    cases += [(f"stage.name={v}", _recipe({**_STAGE, "name": v})) for v in (
        "5", '""', '"../x"', '"a/b"', "[]",
    )]  # fmt: skip
    no_iters = {k: v for k, v in _STAGE.items() if k != "iters"}
    head = 'name = "fuzz"\n'
    cases += [
        ("no-stage", head.encode()),
        ("stage-string", (head + 'stage = "a"\n').encode()),
        ("stage-numbers", (head + "stage = [1, 2]\n").encode()),
        ("stage-empty", (head + "stage = []\n").encode()),
        ("stage-empty-table", (head + "[[stage]]\n").encode()),
        ("stage-table", (head + "[stage]\n").encode() + _toml_file(_STAGE)),
        ("stage-list-of-lists", (head + "stage = [[1]]\n").encode()),
        ("no-iters", _recipe(no_iters)),
        ("no-name", _recipe(_STAGE, head="")),
        ("name-number", _recipe(_STAGE, head="name = 5\n")),
        ("name-table", _recipe(_STAGE, head="name = { a = 1 }\n")),
        ("description-table", _recipe(_STAGE, head=head + "description = { a = 1 }\n")),
        ("defaults-number", _recipe(_STAGE, head=head + "defaults = 5\n")),
        ("defaults-list", _recipe(_STAGE, head=head + "defaults = [1]\n")),
        ("defaults-bad", _recipe(_STAGE, head=head + "defaults = { lr = -1 }\n")),
        ("defaults-unknown", _recipe(_STAGE, head=head + "defaults = { foo = 1 }\n")),
        ("two-same-names", _recipe(_STAGE) + b"[[stage]]\n" + _toml_file(_STAGE)),
        ("non-utf8", _recipe(_STAGE) + b'degrade = "\xff"\n'),
        ("truncated", _recipe(_STAGE)[:-9]),
        ("binary", bytes(range(256))),
    ]
    return cases


# JSON values a model config's key must refuse where the tensors say otherwise.
_JSON_VALUES: list[tuple[str, object]] = [
    ("text", "abc"),
    ("zero", 0),
    ("negative", -2),
    ("huge", 10**7),
    ("enormous", 10**30),
    ("fraction", 2.5),
    ("nan", math.nan),
    ("inf", math.inf),
    ("null", None),
    ("list", []),
    ("object", {}),
    ("true", True),
    ("text-list", ["a", "b", "c"]),
    ("nan-list", [math.nan, 0, 0]),
    ("short-list", [1]),
]
# A value that is a good one for the key (a res_scale of 2.5 is odd, not wrong).
_JSON_VALID = {("res_scale", "fraction")}


def _key_cases(
    config: dict[str, object], keys: Iterable[str], valid: set[tuple[str, str]] = _JSON_VALID
) -> list[tuple[str, object]]:
    return [
        (f"{key}={name}", {**config, key: value})
        for key in keys
        for name, value in _JSON_VALUES
        if (key, name) not in valid
    ]


def model_config_cases(config: dict[str, object]) -> list[tuple[str, object]]:
    """(name, config) for an honest model config: each key hostile, each key gone, and the
    config itself of another JSON type."""
    cases = _key_cases(config, config)
    # the keys without a default (an MDSR's res_scale is the authors' 1 when left out)
    required = ["arch", "n_resblocks", "n_feats"]
    required += ["scale", "res_scale"] if config["arch"] == "edsr" else ["scales"]
    cases += [(f"no-{k}", {x: v for x, v in config.items() if x != k}) for k in required]
    cases += [(f"config={n}", v) for n, v in (("list", [1, 2]), ("text", "x"), ("number", 5))]
    return cases


def _with_config(config: object) -> dict[str, str]:
    return {"format": "edsr", "format_version": "1", "config": json.dumps(config)}


def _safetensors_header(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_files(honest: Path) -> list[tuple[str, bytes]]:
    """Hostile safetensors from an honest one: its config and metadata, its header, its bytes,
    its tensors."""
    with safe_open(str(honest), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(honest))
    config = json.loads(meta["config"])
    cases: list[tuple[str, bytes]] = []

    def with_meta(m: dict[str, str], t: dict[str, torch.Tensor] = tensors) -> bytes:
        from safetensors.torch import save

        return save(t, metadata=m)

    cases += [(n, with_meta({**meta, **_with_config(c)})) for n, c in model_config_cases(config)]
    cases += [
        ("config-not-json", with_meta({**meta, "config": "{arch: edsr"})),
        ("config-empty", with_meta({**meta, "config": ""})),
        ("config-nested-nan", with_meta({**meta, "config": '{"arch": NaN}'})),
        ("config-deep", with_meta({**meta, "config": "[" * 100_000 + "]" * 100_000})),
        ("format-version-999", with_meta({**meta, "format_version": "999"})),
    ]
    raw = honest.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    cases += [
        ("header-length-huge", struct.pack("<Q", 2**63) + raw[8:]),
        ("header-length-past-end", struct.pack("<Q", len(raw)) + raw[8:]),
        ("header-length-short", struct.pack("<Q", 2) + raw[8:]),
        ("header-not-json", struct.pack("<Q", n) + b"{" + b"x" * (n - 1) + raw[8 + n :]),
        ("header-list", _safetensors_header([1, 2])),  # type: ignore[arg-type]
        ("truncated-header", raw[: 8 + n // 2]),
        ("truncated-data", raw[: len(raw) - 100]),
        ("metadata-not-text", _safetensors_header({**header, "__metadata__": {"config": 5}},
                                                  raw[8 + n :])),
        ("metadata-list", _safetensors_header({**header, "__metadata__": [1]}, raw[8 + n :])),
        ("offsets-past-end", _safetensors_header(
            {**header, "head.0.weight": {**header["head.0.weight"],
                                         "data_offsets": [0, 10**12]}}, raw[8 + n :])),
        ("shape-huge", _safetensors_header(
            {**header, "head.0.weight": {**header["head.0.weight"],
                                         "shape": [10**6, 10**6, 10**6]}}, raw[8 + n :])),
    ]  # fmt: skip
    for key in ("head.0.weight", "tail.0.0.weight", "body.0.body.0.weight", "sub_mean.bias"):
        if key not in tensors:
            continue
        for name, value in (
            ("flat", tensors[key].flatten().unsqueeze(0)),
            ("scalar", tensors[key].flatten()[0].clone()),
            ("empty", torch.zeros(0)),
            ("nan", torch.full_like(tensors[key], math.nan)),
            ("int", tensors[key].to(torch.int32)),
        ):
            cases.append((f"{key}={name}", with_meta(meta, {**tensors, key: value})))
    cases.append(("no-tensors", with_meta(meta, {"x": torch.zeros(1)})))
    return cases


# What edsr reads of a super-image config.json. The rest is not read: rgb_mean and rgb_std
# super-image never applies, scale is the last one saved (one folder holds several), and
# _name_or_path and data_parallel are its bookkeeping.
SUPERIMAGE_READ = ("model_type", "res_scale", "bam", "no_upsampling", "n_resblocks", "n_feats",
                   "n_colors")  # fmt: skip


def superimage_configs(config: dict[str, object]) -> list[tuple[str, bytes]]:
    """Hostile super-image ``config.json`` files from an honest one: the keys edsr reads, and
    the file."""
    keys = [k for k in SUPERIMAGE_READ if k in config]
    other = "EDSR" if config["model_type"] == "MDSR" else "MDSR"
    cases = [(n, json.dumps(c).encode()) for n, c in _key_cases(config, keys)]
    cases += [
        ("model_type=other", json.dumps({**config, "model_type": other}).encode()),
        ("model_type=carn", json.dumps({**config, "model_type": "CARN"}).encode()),
        ("bam=yes", json.dumps({**config, "bam": "yes"}).encode()),
        ("no_upsampling=1", json.dumps({**config, "no_upsampling": 1}).encode()),
        ("not-json", b"{model_type: EDSR"),
        ("non-utf8", b'{"model_type": "EDSR\xff"}'),
        ("truncated", json.dumps(config).encode()[:-5]),
        ("empty", b""),
        ("deep", b"[" * 100_000 + b"]" * 100_000),
    ]
    return cases + [
        (n, json.dumps(v).encode()) for n, v in (("list", [1, 2]), ("text", "x"), ("number", 5))
    ]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> dict[str, Path]:
    """Honest inputs, outside the folder watched for writes."""
    root = tmp_path_factory.mktemp("hostile-file-inputs")
    save_model(small_edsr(2), root / "edsr.safetensors")
    save_model(small_mdsr(), root / "mdsr.safetensors")
    img = root / "in.png"
    Image.open(DATA / "Set5/HR/bird.png").crop((0, 0, 24, 24)).save(img)
    crop_set(root / "set", ("bird",), (0, 0, 24, 24))
    return {"root": root, "img": img, "set": root / "set"}


@pytest.fixture(scope="module")
def _shared_work(tmp_path_factory, res) -> Path:
    work = tmp_path_factory.mktemp("hostile-file-work")
    shutil.copytree(res["set"], work / "set")  # the training configs' relative "set"
    return work


@pytest.fixture
def work(_shared_work: Path, monkeypatch) -> Iterator[Path]:
    """The folder every case runs in; what a case wrote is removed after the test."""
    hostile_env(monkeypatch, _shared_work)
    kept = snapshot(_shared_work)
    yield _shared_work
    remove_new(_shared_work, kept)


Door = Callable[[Path], list[str]]


def _model_doors(res: dict[str, Path], *extra: str) -> dict[str, Door]:
    """The command-line doors that read a model file (``extra``: their opt-in flags)."""
    return {
        "upscale": lambda m: ["upscale", str(res["img"]), "-o", "out", "--model", str(m),
                              "--quiet", *extra],
        "eval": lambda m: ["eval", "--model", str(m), "--data", str(res["set"]), "--scale", "2",
                           "--quiet", "--json", "out.json", *extra],
        "export": lambda m: ["export", str(m), "--format", "safetensors", "-o",
                             "out.safetensors"],
        "weights import": lambda m: ["weights", "import", str(m), "-o", "out.safetensors",
                                     "--quiet"],
        "demo": lambda m: ["demo", "--model", str(m), "--scale", "2", "-o", "out", *extra],
    }  # fmt: skip


class Fuzz:
    """Runs hostile files through doors and keeps count: cases per door, and what went wrong."""

    def __init__(self, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.work, self.capsys = work, capsys
        self.ran: dict[str, int] = {}
        self.problems: list[str] = []

    def cli(self, door: str, name: str, argv: list[str]) -> None:
        before = snapshot(self.work)
        code, out, err = run_cli(argv, self.capsys)
        self.ran[door] = self.ran.get(door, 0) + 1
        problem = refusal_problem(code, err)
        wrote = sorted(snapshot(self.work) - before)
        if wrote:
            remove_new(self.work, before)
            problem = problem or f"wrote {wrote}"
        if problem:
            self.problems.append(f"{door} [{name[:60]}]: {problem}: {err.strip()[:300]!r}")

    def python(self, door: str, name: str, call: Callable[[], object]) -> None:
        self.ran[door] = self.ran.get(door, 0) + 1
        try:
            call()
        except (EdsrError, ValueError) as e:
            if len(str(e).splitlines()) != 1:
                self.problems.append(f"{door} [{name[:60]}]: {len(str(e).splitlines())} lines")
        except Exception as e:  # noqa: BLE001 - what the test is for
            self.problems.append(f"{door} [{name[:60]}]: {type(e).__name__}: {str(e)[:200]!r}")
        else:
            self.problems.append(f"{door} [{name[:60]}]: accepted")

    def check(self, expected: dict[str, int]) -> None:
        print(f"hostile file cases per door: {self.ran}")
        assert not self.problems, f"{len(self.problems)} problems:\n" + "\n".join(self.problems)
        assert self.ran == expected


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# Other networks behind copied metadata (the honest export is x2 RGB): (scale, colours).
OTHERS = {"same-size": (1, 3), "x3": (3, 3), "gray": (2, 1)}


# The issue's own cases: always run. The whole fuzz takes about 35 s on two cores, so the
# default run (slow tests left out) takes every 4th case of each kind, and --slow every case.
ISSUE_CASES = {
    'preset=["a"]', "stage.scales=[]", "stage.iters=-1", "stage.patch_size=5000",
    "stage.batch_size=1000000000", 'stage.init="/etc/passwd"', "no-stage", "stage-string",
    "edsr config-not-json", "edsr config=list", "edsr scale=zero", "edsr scale=negative",
    "mdsr n_resblocks=huge", "edsr header-length-huge", "edsr header-not-json",
    "edsr truncated-data", "edsr res_scale=text", "edsr list", "edsr no-n_feats",
    "info reach=1/0", "info scale=zero", "info scale=negative", "initializer-dims-huge",
    "external-outside", *(f"other-{n}" for n in OTHERS),
}  # fmt: skip
EVERY = [pytest.param(False, id="sample"), pytest.param(True, id="all", marks=pytest.mark.slow)]


def _sample(cases: list[tuple[str, Any]], every: bool) -> list[tuple[str, Any]]:
    return [c for i, c in enumerate(cases) if every or i % 4 == 0 or c[0] in ISSUE_CASES]


# --- the doors that work: each base case ------------------------------------------------------


def test_base_cases_pass_every_door(res, work, capsys):
    """Each door with its honest file: a refusal below is the hostile value's doing."""
    inputs = work.parent / f"{work.name}-inputs"
    inputs.mkdir(exist_ok=True)
    config = _write(inputs / "train.toml", _toml_file(BASE_CONFIG))
    for argv in (["train", "--config", str(config), "--quiet"],
                 ["train", "--recipe", str(_write(inputs / "r.toml", _recipe(_STAGE))),
                  "--dry-run", "--data-root", str(DATA), "--out", "run", "--quiet"],
                 *(door(res["root"] / "edsr.safetensors") for door in _model_doors(res).values())
                 ):  # fmt: skip
        before = snapshot(work)
        code, out, err = run_cli(argv, capsys)
        assert code == 0, (argv, err)
        remove_new(work, before)
    from edsr.weights.transfer import init_from

    for arch in ("edsr", "mdsr"):
        assert init_from(small_mdsr(), res["root"] / f"{arch}.safetensors").loaded > 0


# --- the fuzz ------------------------------------------------------------------------------------


@pytest.mark.parametrize("every", EVERY)
def test_hostile_training_configs(res, work, capsys, every):
    fuzz = Fuzz(work, capsys)
    inputs = work.parent / f"{work.name}-configs"
    cases = _sample(config_files(), every)
    for i, (name, content) in enumerate(cases):
        path = _write(inputs / f"{i}.toml", content)
        fuzz.cli("train --config", name, ["train", "--config", str(path), "--quiet"])
        if name.startswith("out="):
            continue  # a resumed run is where its folder is now, whatever its config says
        resumed = inputs / f"run-{i}"
        _write(resumed / "config.toml", content)
        fuzz.cli("train --resume", name, ["train", "--resume", str(resumed), "--quiet"])
    moved = sum(n.startswith("out=") for n, _ in cases)
    fuzz.check({"train --config": len(cases), "train --resume": len(cases) - moved})


@pytest.mark.parametrize("every", EVERY)
def test_hostile_recipes(res, work, capsys, every):
    fuzz = Fuzz(work, capsys)
    inputs = work.parent / f"{work.name}-recipes"
    cases = _sample(recipe_files(), every)
    roots = ["--data-root", str(DATA)]
    for i, (name, content) in enumerate(cases):
        path = _write(inputs / f"{i}.toml", content)
        fuzz.cli("train --recipe", name, ["train", "--recipe", str(path), "--dry-run",
                                         "--out", "run", "--quiet", *roots])  # fmt: skip
        resumed = inputs / f"run-{i}"
        _write(resumed / "recipe.toml", content)
        fuzz.cli("train --resume (recipe)", name,
                 ["train", "--resume", str(resumed), "--dry-run", "--quiet", *roots])  # fmt: skip
    fuzz.check({"train --recipe": len(cases), "train --resume (recipe)": len(cases)})


def _run_model_doors(
    fuzz: Fuzz,
    res,
    cases: list[tuple[str, Path]],
    doors: dict[str, Door] | None = None,
    *,
    init: bool = False,
    **kw,
) -> None:
    """Each case through ``doors`` (the CLI's), ``edsr.load_model`` and the server's loader;
    ``init``: also ``--init-from``'s reader, into a model of the fixtures' size."""
    doors = doors or _model_doors(res)
    for name, path in cases:
        for door, argv in doors.items():
            fuzz.cli(door, name, argv(path))

        def load_and_run(path: Path = path) -> object:
            model = edsr.load_model(path, device="cpu", **kw)
            return edsr.upscale(Image.open(res["img"]), model)

        fuzz.python("load_model", name, load_and_run)

        def serve_load(path: Path = path) -> object:  # what `edsr serve --model` reads
            from edsr.serve import load_models

            trust = bool(kw.get("run_torchscript_code"))
            return load_models([str(path)], progress=False, run_torchscript_code=trust)

        fuzz.python("serve load_models", name, serve_load)
        if init:

            def init_into(path: Path = path) -> object:  # what `edsr train --init-from` reads
                from edsr.weights.transfer import init_from

                return init_from(small_mdsr(), path)

            fuzz.python("init_from", name, init_into)


def _counts(n: int, *more: str) -> dict[str, int]:
    """What every model door ran for ``n`` cases: the command-line doors, then Python's."""
    doors = ["upscale", "eval", "export", *more, "demo", "load_model", "serve load_models"]
    return dict.fromkeys(doors, n)


@pytest.mark.parametrize("every", EVERY)
def test_hostile_safetensors(res, work, capsys, every):
    fuzz = Fuzz(work, capsys)
    inputs = work.parent / f"{work.name}-safetensors"
    cases = []
    for arch in ("edsr", "mdsr"):
        honest = res["root"] / f"{arch}.safetensors"
        cases += [
            (f"{arch} {name}", _write(inputs / f"{arch}-{i}.safetensors", content))
            for i, (name, content) in enumerate(safetensors_files(honest))
        ]
    cases = _sample(cases, every)
    _run_model_doors(fuzz, res, cases, init=True)
    n = len(cases)
    fuzz.check(_counts(n, "weights import", "init_from"))


@pytest.mark.parametrize("every", EVERY)
def test_hostile_superimage_folders(res, work, capsys, every):
    fuzz = Fuzz(work, capsys)
    inputs = work.parent / f"{work.name}-superimage"
    cases = []
    for arch, weights in (("edsr", "pytorch_model_2x.pt"), ("mdsr", "pytorch_model_2x.pt")):
        peer = PEERS / f"superimage-{arch}"
        config = json.loads((peer / "config.json").read_text())
        for i, (name, content) in enumerate(superimage_configs(config)):
            folder = inputs / f"{arch}-{i}"
            shutil.copy(peer / weights, _write(folder / "config.json", content).with_name(weights))
            cases.append((f"{arch} {name}", folder))
    cases = _sample(cases, every)
    _run_model_doors(fuzz, res, cases)
    n = len(cases)
    fuzz.check(_counts(n, "weights import"))


# --- exported graphs ---------------------------------------------------------------------------

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'edsr[export]')",
)


class _Other(nn.Module):
    """Another network than edsr's: ``scale`` x bicubic-free upscaling to ``colors`` channels."""

    def __init__(self, scale: int, colors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, colors * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def _onnx_of(module: nn.Module) -> Any:
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.rand(1, 3, 8, 8),), buf, dynamo=False,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}, "output": {0: "b", 2: "H", 3: "W"}},
        )  # fmt: skip
    return onnx.load_model_from_string(buf.getvalue())


def _with_info(proto: Any, info: str | None) -> bytes:
    from edsr.runtimes import META_KEY

    proto = type(proto).FromString(proto.SerializeToString())
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if info is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, info
    return proto.SerializeToString()


def export_info_cases(info: dict[str, Any]) -> list[tuple[str, str]]:
    """Hostile edsr metadata of an export from an honest one: its keys and its probe's."""
    cases = [(n, json.dumps(c)) for n, c in _key_cases(info, EXPORT_INFO_READ, _EXPORT_VALID)]
    probe = info["probe"]
    cases += [
        (f"probe.{n}", json.dumps({**info, "probe": p}))
        for n, p in _key_cases(probe, probe, _EXPORT_VALID)
    ]
    cases += [(f"reach={r}", json.dumps({**info, "probe": {**probe, "reach": r}}))
              for r in ("1/0", "-1", "1e400", "nan", "10**9", str(10**9), "3/")]  # fmt: skip
    cases += [
        ("no-probe", json.dumps({k: v for k, v in info.items() if k != "probe"})),
        ("not-json", "{scale: 2"),
        ("list", "[1, 2]"),
        ("deep", "[" * 100_000 + "]" * 100_000),
        ("empty", ""),
    ]
    return cases


# What a run reads of an export's metadata; its config is shown, not run (parameters: a count
# shown, any number of them is one).
EXPORT_INFO_READ = ("scale", "arch", "n_colors", "rgb_range", "precision", "config")
# Good values there: any positive range is one (the graph holds its mean shift), and ten
# million bytes or multiply-adds per pixel is a large model.
_EXPORT_VALID = {("rgb_range", n) for n in ("huge", "enormous", "fraction")} | {
    (k, "huge") for k in ("bytes_per_pixel", "out_bytes_per_pixel", "macs_per_pixel")
}


def onnx_files(honest: Path) -> list[tuple[str, bytes]]:
    """Hostile ONNX files: other networks wearing an honest export's metadata, the metadata
    damaged, weights that onnxruntime refuses, and damaged bytes."""
    import onnx
    from onnx import TensorProto

    from edsr.runtimes import META_KEY

    proto = onnx.load(str(honest))
    info = {p.key: p.value for p in proto.metadata_props}[META_KEY]
    cases = [(f"other-{n}", _with_info(_onnx_of(_Other(*sc)), info)) for n, sc in OTHERS.items()]
    cases += [(f"info {n}", _with_info(proto, text)) for n, text in
              export_info_cases(json.loads(info))]  # fmt: skip
    cases.append(("no-info", _with_info(proto, None)))
    for name, location, length in (
        ("initializer-4TB", "weights.bin", 4 * 2**40),
        ("external-outside", "../../etc/passwd", 64),
        ("external-absolute", "/etc/passwd", 64),
        ("external-missing", "no-such.bin", 64),
    ):
        other = _onnx_of(_Other(2, 3))
        weight = next(t for t in other.graph.initializer if len(t.dims) == 4)
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        del weight.external_data[:]
        for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
            weight.external_data.append(onnx.StringStringEntryProto(key=k, value=v))
        cases.append((name, _with_info(other, info)))
    huge = _onnx_of(_Other(2, 3))  # a weight declaring 40 TB, holding 4 bytes
    weight = next(t for t in huge.graph.initializer if len(t.dims) == 4)
    del weight.dims[:]
    weight.dims.extend([2**20, 2**20, 3, 3])
    weight.raw_data = b"\0" * 4
    cases.append(("initializer-dims-huge", _with_info(huge, info)))
    raw = honest.read_bytes()
    cases += [("truncated", raw[: len(raw) // 2]), ("truncated-head", raw[:40])]
    return cases


def _exported_doors(res: dict[str, Path], *extra: str) -> dict[str, Door]:
    doors = _model_doors(res, *extra)
    doors.pop("weights import")  # a graph is not a checkpoint: refused by its bytes, as export
    return doors


@needs_onnx
@pytest.mark.parametrize("every", EVERY)
def test_hostile_onnx_files(res, work, capsys, every):
    from edsr.export import export_model

    fuzz = Fuzz(work, capsys)
    inputs = work.parent / f"{work.name}-onnx"
    honest = export_model(small_edsr(2), inputs / f"honest-{every}.onnx", "onnx", scale=2).path
    cases = [(n, _write(inputs / f"{i}" / "m.onnx", c))
             for i, (n, c) in enumerate(_sample(onnx_files(honest), every))]  # fmt: skip
    _run_model_doors(fuzz, res, cases, doors=_exported_doors(res))
    n = len(cases)
    fuzz.check(_counts(n))


def _torchscript(module: nn.Module, info: str | None, path: Path) -> Path:
    from edsr.runtimes import TORCHSCRIPT_EXTRA

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), torch.rand(1, 3, 8, 8))
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: info} if info else {})
    return path


@pytest.mark.parametrize("every", EVERY)
def test_hostile_torchscript_files(res, work, capsys, every):
    """Opted in (--run-torchscript-code): the code runs, and what it does is checked."""
    from edsr.export import export_model
    from edsr.runtimes import torchscript_info

    fuzz = Fuzz(work, capsys)
    inputs = work.parent / f"{work.name}-torchscript"
    honest = export_model(small_edsr(2), inputs / f"honest-{every}.pt", "torchscript", scale=2).path
    info = torchscript_info(honest)
    assert info is not None
    cases = [(f"other-{n}", _torchscript(_Other(*sc), info, inputs / f"other-{n}.pt"))
             for n, sc in OTHERS.items()]  # fmt: skip
    honest_module = torch.jit.load(str(honest))
    cases += [(f"info {n}", _torchscript(honest_module, text or None, inputs / f"info-{i}.pt"))
              for i, (n, text) in enumerate(export_info_cases(json.loads(info)))]  # fmt: skip
    raw = honest.read_bytes()
    cases.append(("truncated", _write(inputs / "truncated.pt", raw[: len(raw) // 2])))
    cases = _sample(cases, every)
    flag = "--run-torchscript-code"
    _run_model_doors(fuzz, res, cases, doors=_exported_doors(res, flag), run_torchscript_code=True)
    n = len(cases)
    fuzz.check(_counts(n))


def test_the_issue_cases_are_in_every_run(res):
    """The sample keeps the issue's cases by name: each name is one the generators make."""
    names = {n for n, _ in config_files()} | {n for n, _ in recipe_files()}
    for arch in ("edsr", "mdsr"):
        names |= {f"{arch} {n}" for n, _ in safetensors_files(res["root"] / f"{arch}.safetensors")}
        config = json.loads((PEERS / f"superimage-{arch}" / "config.json").read_text())
        names |= {f"{arch} {n}" for n, _ in superimage_configs(config)}
    info = {"scale": 2, "probe": {"reach": "15/2"}}  # the keys the names are made from
    names |= {f"info {n}" for n, _ in export_info_cases(info)} | {f"other-{n}" for n in OTHERS}
    names |= {"initializer-dims-huge", "external-outside"}  # onnx_files' own, by name there
    assert names >= ISSUE_CASES, ISSUE_CASES - names


# --- the issue's own cases, each with its line ---------------------------------------------------


def _superimage_abc(root: Path) -> list[str]:
    folder = root / "si-abc"
    config = json.loads((PEERS / "superimage-edsr" / "config.json").read_text())
    _write(folder / "config.json", json.dumps({**config, "res_scale": "abc"}).encode())
    shutil.copy(PEERS / "superimage-edsr" / "pytorch_model_2x.pt", folder)
    return ["upscale", str(DATA / "peers" / "input.png"), "-o", "out", "--model", str(folder)]


def _preset_list(root: Path) -> list[str]:
    config = _write(root / "f.toml", _toml_file({**BASE_CONFIG, "preset": '["a"]'}))
    return ["train", "--config", str(config), "--quiet"]


def _other_graph(root: Path, kind: str, *extra: str) -> list[str]:
    from edsr.export import export_model

    honest = export_model(small_edsr(2), root / f"honest.{kind}", kind, scale=2).path
    if kind == "onnx":
        import onnx

        from edsr.runtimes import META_KEY

        info = {p.key: p.value for p in onnx.load(str(honest)).metadata_props}[META_KEY]
        other = _write(root / "other.onnx", _with_info(_onnx_of(_Other(1, 3)), info))
    else:
        from edsr.runtimes import torchscript_info

        other = _torchscript(_Other(1, 3), torchscript_info(honest), root / "other.pt")
    return ["upscale", str(DATA / "peers" / "input.png"), "-o", "out", "--model", str(other),
            *extra]  # fmt: skip


def _no(backend: str) -> pytest.MarkDecorator:
    present = torch.backends.mps.is_available() if backend == "mps" else torch.cuda.is_available()
    return pytest.mark.skipif(present, reason=f"this machine has {backend}")


_IMG = str(DATA / "peers" / "input.png")
ISSUE_LINES = [
    pytest.param(_superimage_abc, 1, "its config.json's res_scale must be a number, got 'abc'",
                 id="superimage-res_scale-abc"),
    pytest.param(_preset_list, 1, "config key 'preset': expected str, got ['a']",
                 id="config-preset-list"),
    pytest.param(lambda r: ["train", "--train", str(DATA / "Set5"), "--out", "/proc/nope",
                            "--iters", "1", "--quiet"], 1, "cannot write",
                 marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc"),
                 id="train-out-proc"),
    pytest.param(lambda r: ["upscale", _IMG, "-o", "out", "--device", "mps"], 1,
                 "no MPS (Apple GPU) support", marks=_no("mps"), id="device-mps"),
    pytest.param(lambda r: ["upscale", _IMG, "-o", "out", "--device", "cuda"], 1,
                 "no CUDA GPU is available", marks=_no("cuda"), id="device-cuda"),
    pytest.param(lambda r: ["upscale", _IMG, "-o", "out", "--device", "tpu"], 2,
                 "unknown device 'tpu'", id="device-tpu"),
    pytest.param(lambda r: _other_graph(r, "onnx"), 1, "the metadata belongs to another graph",
                 marks=needs_onnx, id="onnx-of-another-network"),
    pytest.param(lambda r: _other_graph(r, "torchscript"), 1, "--run-torchscript-code",
                 id="torchscript-of-another-network"),
    pytest.param(lambda r: _other_graph(r, "torchscript", "--run-torchscript-code"), 1,
                 "the metadata belongs to another graph", id="torchscript-opted-in"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "status", "line"), ISSUE_LINES)
def test_the_issue_cases_are_one_line(make, status, line, work, capsys, tmp_path):
    argv = make(tmp_path)
    before = snapshot(work)
    code, out, err = run_cli(argv, capsys)
    assert refusal_problem(code, err) is None and code == status, (argv, code, err)
    assert line in err, err
    assert snapshot(work) == before
