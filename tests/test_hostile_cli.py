"""Every command, every option, hostile values made from the parser's own definitions.

The parser ``edsr.cli`` builds is walked: each option checked by a ``edsr.cli.common.Checked``
type gets the values its kind and bounds refuse (nan, inf, 0, -1, huge numbers; a file where a
folder goes, a folder under a file, a missing folder), each path-like option without one gets
hostile paths, and each other text option hostile text. Every case must end the same way: exit
status 1 or 2, exactly one line on stderr (naming the option or the path), no internal error,
no traceback, and nothing written. A base command per leaf is valid, or fails only later (a
missing model), so a value that slipped through shows as the wrong line, a written file or a 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import edsr.cli
from conftest import DATA, crop_set
from edsr import build_model, save_model
from edsr.cli import build_parser
from edsr.cli.common import Checked
from hostile import hostile_env, refusal_problem, remove_new, run_cli, snapshot

FILE = "plain-file.txt"  # a file where a folder goes
UNDER_FILE = f"{FILE}/sub"  # a folder under a file
MISSING = "no-such-dir/sub"  # a missing parent
FOLDER = "a-folder"  # a folder where a file goes


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> dict[str, str]:
    """Small real inputs, outside the folder watched for writes."""
    root = tmp_path_factory.mktemp("hostile-inputs")
    model = root / "tiny_x2.safetensors"
    save_model(build_model("edsr-baseline", scale=2), model)
    img = root / "in.png"
    Image.open(DATA / "Set5/HR/bird.png").crop((0, 0, 24, 24)).save(img)
    small = crop_set(root / "small", ("bird",), (0, 0, 24, 24))
    return {
        "model": str(model),
        "img": str(img),
        "set": str(small),
        "hr": str(small / "HR"),
        "missing_model": str(root / "missing.safetensors"),
    }


def _bases(r: dict[str, str]) -> dict[str, list[tuple[str, list[str]]]]:
    """Per command, (dest, tokens) pairs: a hostile value replaces its option's tokens."""
    return {
        "demo": [("model", ["--model", r["model"]]), ("samples", ["--samples", r["hr"]])],
        "upscale": [
            ("inputs", [r["img"]]),
            ("output", ["-o", "out"]),
            ("model", ["--model", r["model"]]),
            ("quiet", ["--quiet"]),
        ],
        "export": [
            ("model", [r["model"]]),
            ("format", ["--format", "safetensors"]),
            ("output", ["-o", "m.safetensors"]),
        ],
        "eval": [
            ("model", ["--model", "bicubic"]),
            ("data", ["--data", r["set"]]),
            ("scale", ["--scale", "2"]),
            ("quiet", ["--quiet"]),
        ],
        "weights info": [("name", ["edsr-baseline-x2"])],
        "weights download": [("names", ["edsr-baseline-x2"]), ("quiet", ["--quiet"])],
        "weights import": [
            ("file", [r["model"]]),
            ("output", ["-o", "imported.safetensors"]),
            ("quiet", ["--quiet"]),
        ],
        "train": [
            ("train", ["--train", r["set"]]),
            ("out", ["--out", "run"]),
            ("iters", ["--iters", "1"]),
            ("patch_size", ["--patch-size", "8"]),
            ("batch_size", ["--batch-size", "1"]),
            ("quiet", ["--quiet"]),
        ],
        # Never a server: the model is missing, so even a value let through ends before binding.
        "serve": [("model", ["--model", r["missing_model"]])],
        "data list": [],
        "data download": [
            ("names", ["Set5"]),
            ("root", ["--root", "data"]),
            ("quiet", ["--quiet"]),
        ],
        "downscale": [("hr_dir", [r["hr"]]), ("output", ["-o", "lr"]), ("quiet", ["--quiet"])],
    }


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(words), parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaves(child, (*words, name))


def _takes_value(a: argparse.Action) -> bool:
    return a.nargs != 0 and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))


def _path_like(a: argparse.Action) -> bool:
    text = f"{a.help or ''} {a.metavar or ''}".lower()
    return any(w in text for w in ("file", "folder", "director", "checkpoint"))


def _number_values(t: Checked) -> list[str]:
    values = ["nan", "inf", "-inf", "0", "-1", "1e30", str(10**30)]
    if t.maximum is not None and t.maximum < 10**29:
        values.append(str(int(t.maximum) + 1) if t.kind == "int" else repr(t.maximum * 2))

    def accepted(v: str) -> bool:
        try:
            x = int(v) if t.kind == "int" else float(v)
        except ValueError:
            return False
        low_ok = x >= t.minimum if t.kind == "int" else x > (t.minimum or 0)
        return low_ok and x <= (t.maximum if t.maximum is not None else float("inf"))

    return [v for v in values if not accepted(v)]


_PATH_VALUES = {
    "output_folder": [FILE, UNDER_FILE],
    "output_file": [FOLDER, UNDER_FILE],
    "output_path": [UNDER_FILE],
    "input_folder": [FILE, UNDER_FILE, MISSING],
    "existing_folder": [FILE, UNDER_FILE, MISSING],
    "memory": ["nan", "inf", "0", "-1", "1e30", "2000000TiB"],
    "device": ["nan", "-1", "cuda:-1", ""],
    "degradation": ["nan", "jpeg:0", "jpeg:1e30", "jpeg:75:inf", ""],
}


# One parser for the whole module: building it takes argparse 35 ms, parsing microseconds.
PARSER = build_parser()
LEAVES = dict(_leaves(PARSER))


def _cases() -> list[tuple[str, str, str, str]]:
    """(command, dest, value, how the line must name it) for every hostile case."""
    cases = []
    for command, leaf in LEAVES.items():
        for a in leaf._actions:
            if not _takes_value(a) or a.choices:
                continue
            t = a.type
            if isinstance(t, Checked):
                values = _number_values(t) if t.kind in ("int", "float") else _PATH_VALUES[t.kind]
                cases += [(command, a.dest, v, "option") for v in values]
            else:
                # A bare int or float lets nan, inf and -1 in: numbers go through Checked.
                assert t not in (int, float), f"{command} {a.dest}: type {t!r} is unchecked"
                if _path_like(a):
                    cases += [(command, a.dest, v, "path") for v in (FILE, UNDER_FILE, MISSING)]
                else:
                    cases += [(command, a.dest, v, "any") for v in ("nan", "-1")]
    return cases


CASES = _cases()


def _argv(command: str, dest: str, value: str, r: dict[str, str]) -> list[str]:
    action = next(a for a in LEAVES[command]._actions if a.dest == dest)
    base = _bases(r)[command]
    tokens = [action.option_strings[-1], value] if action.option_strings else [value]
    argv = command.split()
    for d, ts in base:  # in place of the base's tokens for it (positionals keep their order)
        argv += tokens if d == dest else ts
    return argv if any(d == dest for d, _ in base) else argv + tokens


@pytest.fixture(scope="module")
def _shared_work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("hostile-work")
    (work / FILE).write_text("not a folder\n")
    (work / FOLDER).mkdir()
    return work


@pytest.fixture
def work(_shared_work: Path) -> Iterator[Path]:
    """One folder for all cases (they write nothing); what a failing case wrote is removed."""
    kept = snapshot(_shared_work)
    yield _shared_work
    remove_new(_shared_work, kept)


def test_every_command_has_a_base_and_hostile_cases():
    commands = {c for c, *_ in CASES}
    assert commands <= set(_bases({k: "" for k in ("model", "img", "set", "hr", "missing_model")}))
    assert {"upscale", "eval", "train", "export", "demo", "serve", "downscale"} <= commands
    assert {"weights import", "weights download", "data download"} <= commands
    assert len(CASES) > 200


@pytest.mark.parametrize(
    ("command", "dest", "value", "named"), CASES, ids=[f"{c}-{d}-{v}" for c, d, v, _ in CASES]
)
def test_hostile_value_is_refused_in_one_line_and_writes_nothing(
    command, dest, value, named, res, work, monkeypatch, capsys
):
    hostile_env(monkeypatch, work)
    monkeypatch.setattr(edsr.cli, "build_parser", lambda: PARSER)
    before = snapshot(work)
    argv = _argv(command, dest, value, res)
    code, out, err = run_cli(argv, capsys)
    assert refusal_problem(code, err) is None, (argv, code, out, err)
    lines = err.splitlines()
    if named == "option":
        action = next(a for a in LEAVES[command]._actions if a.dest == dest)
        names = action.option_strings or [action.metavar or action.dest]
        assert any(n in lines[0] for n in names), (argv, err)
    elif named == "path":  # the path, or the option when it does not go with the base command
        option = "--" + dest.replace("_", "-")
        assert value.split("/")[0] in lines[0] or option in lines[0], (argv, err)
    assert snapshot(work) == before, (argv, sorted(snapshot(work) - before))


# The issue's cases end to end, as a user runs them: the exit status and stderr of a process.
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["train", "--train", "x", "--lr", "inf"],
            "argument --lr: expected a finite number",
            marks=pytest.mark.slow,  # a process each: python and torch start in seconds
        ),
        pytest.param(
            ["serve", "--tmp-dir", "no-such-dir/x"],
            "argument --tmp-dir: folder no-such-dir/x",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["data", "download", "Set5", "--root", f"{FILE}/x"],
            f"{FILE} is not a folder",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["train-lr-inf", "serve-tmp-dir-missing", "data-root-under-a-file"],
)
def test_issue_cases_in_a_process(args, expected, tmp_path):
    (tmp_path / FILE).write_text("")
    env = {**os.environ, "EDSR_HOME": str(tmp_path / "home"), "EDSR_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "edsr", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]
