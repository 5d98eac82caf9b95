"""Recipes: the bundled model's stages as one file, run end to end in miniature, killed and
resumed, and the registry entry that points at it."""

import dataclasses
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, crop_set
from edsr import EdsrError, load_model
from edsr.cli import main
from edsr.training.config import load_config, read_toml
from edsr.training.loop import train
from edsr.training.recipe import Recipe, load_recipe, parse_recipe, plan, run_recipe

# The child SIGKILLs itself right after the checkpoint of step KILL_AT of the stage folder
# KILL_IN is on disk, as a power cut would: the fault lives here, not in the product.
KILL_IN_STAGE = """
import os, signal, sys
from edsr.cli import main
from edsr.training.run import RunFolder
save = RunFolder.save_checkpoint
kill_at, kill_in = int(os.environ["KILL_AT"]), os.environ["KILL_IN"]
def save_then_die(self, state, step, keep=2):
    path = save(self, state, step, keep)
    if step == kill_at and self.path.name == kill_in:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
RunFolder.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""

# The miniature: the package recipe's stages, each a few iterations on tiny patches.
MINI_ITERS = (3, 4, 4, 3, 2)


def miniature(recipe: Recipe, iters=MINI_ITERS) -> Recipe:
    small = {"patch_size": 8, "batch_size": 4, "checkpoint_every": 2, "log_every": 1}
    small |= {"lr_decay_every": 2, "val_every": 1000}  # the rate halves inside every stage
    stages = tuple(
        dataclasses.replace(s, values={**s.values, **small, "iters": n})
        for s, n in zip(recipe.stages, iters, strict=True)
    )
    return dataclasses.replace(recipe, stages=stages)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """T91, BSD200 and Set5 by name, as tiny crops of real images."""
    root = tmp_path_factory.mktemp("data")
    box = (40, 40, 88, 88)
    crop_set(root / "T91", ("baby", "butterfly", "woman"), box)
    crop_set(root / "BSD200", ("bird", "head"), box)
    crop_set(root / "Set5", ("bird", "head"), box)
    return root


def test_the_package_recipe_is_what_the_runs_recorded():
    recipe = load_recipe("mdsr-baseline-291")
    assert [s.name for s in recipe.stages] == [
        "edsr-baseline-x2",
        "mdsr",
        "mdsr-long",
        "mdsr-low-lr",
        "mdsr-large-patch",
    ]
    configs = [s.config() for s in recipe.stages]
    assert [c.iters for c in configs] == [2000, 3600, 12000, 7000, 1200]
    assert configs[0].preset == "edsr-baseline" and configs[0].train == ["T91"]
    assert [s.init for s in recipe.stages] == [None, *["previous"] * 4]
    # Stages 2-5 against their own config.toml: every key that changes the weights, except
    # what the recipe states on purpose (stage 2's `auto` was fp32 on its CPU; stage 4 ships
    # step 7,000 of its 8,000).
    on_purpose = {2: {"precision": "auto"}, 4: {"iters": 8000}}
    where = {"out", "train", "val", "init_from", "cache_dir", "checkpoint_every", "workers"}
    for i in (2, 3, 4, 5):
        ran = read_toml(REPO / "docs" / "training" / f"mdsr-baseline-291-stage{i}-config.toml")
        mine = dataclasses.asdict(configs[i - 1])
        for key, value in ran.items():
            if key not in where:
                assert on_purpose.get(i, {}).get(key, mine[key]) == value, (i, key)
        assert configs[i - 1].train == ["T91", "BSD200"] and configs[i - 1].val == "Set5"


def _recipe_matches_its_run(name: str, init: str, degrade: str, iterations: int) -> None:
    """A one-stage recipe is the configuration its run recorded, and its registry entry's."""
    from edsr.weights import get_entry

    recipe = load_recipe(name)
    (stage,) = recipe.stages
    assert stage.init == init  # a shipped model, by its registry name
    ran = read_toml(REPO / "docs" / "training" / f"{name}-config.toml")
    mine = dataclasses.asdict(stage.config())
    where = {"out", "train", "val", "init_from", "cache_dir", "checkpoint_every", "workers"}
    for key, value in ran.items():
        if key not in where:
            assert mine[key] == value, key
    assert ran["degrade"] == degrade
    t = get_entry(name).training
    assert t is not None and t.iterations == recipe.iterations == iterations
    assert t.command == f"edsr train --recipe {name}"


def test_the_jpeg_recipes_are_what_their_runs_recorded():
    from edsr import defaults

    assert set(defaults.route_models()) == {
        defaults.JPEG_MODEL,
        *(f"{defaults.JPEG_MODEL}-{band}" for band in ("mq", "hq")),
    }
    _recipe_matches_its_run(
        defaults.JPEG_MODEL,
        "mdsr-baseline-291",
        "clean:0.1,jpeg:30-97:0.7,jpeg444:30-97:0.2",
        5000,
    )
    # the middle band's from the JPEG one, at a gentle rate ...
    mq = f"{defaults.JPEG_MODEL}-mq"
    _recipe_matches_its_run(mq, defaults.JPEG_MODEL, "jpeg:55-85:0.75,jpeg444:55-85:0.25", 2500)
    # ... the high-quality one from the clean model, not the JPEG one
    hq = f"{defaults.JPEG_MODEL}-hq"
    _recipe_matches_its_run(hq, "mdsr-baseline-291", "jpeg:80-96:0.7,jpeg444:80-96:0.3", 1500)


def test_the_registry_entry_points_at_the_recipe():
    from edsr.weights import get_entry

    recipe = load_recipe("mdsr-baseline-291")
    t = get_entry("mdsr-baseline-291").training
    assert t is not None and t.command == "edsr train --recipe mdsr-baseline-291"
    assert t.iterations == recipe.iterations == 25_800
    assert "assets/recipes/mdsr-baseline-291.toml" in t.notes


def test_a_stage_is_one_more_table(tmp_path):
    text = (REPO / "src/edsr/assets/recipes/mdsr-baseline-291.toml").read_text()
    path = tmp_path / "six.toml"
    path.write_text(
        text
        + '\n[[stage]]\nname = "mdsr-larger-patch"\ninit = "previous"\nsave_as = "fp16"\n'
        + 'preset = "mdsr-baseline"\nscales = [2, 3, 4]\ntrain = ["T91", "BSD200"]\n'
        + 'iters = 3000\nlr = 1e-5\nlr_schedule = "cosine"\nlr_min = 1e-7\npatch_size = 96\n'
    )
    six = load_recipe(path)
    assert [s.table() for s in six.stages[:5]] == [
        s.table() for s in load_recipe("mdsr-baseline-291").stages
    ]
    last = six.stages[-1].config()
    assert (last.lr_schedule, last.patch_size, last.val, last.batch_size, last.lr_min) == (
        "cosine",
        96,
        "Set5",
        16,
        1e-7,
    )


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"iters": 5, "lr": "fast"}, "config key 'lr'"),
        ({"iters": 5, "learning_rate": 1}, "unknown config key"),
        ({}, "iters = N"),
        ({"iters": 5, "out": "x"}, "out is set by the recipe"),
        ({"iters": 5, "init": "previous"}, "needs a stage before it"),
        ({"iters": 5, "init": "no-such-model"}, "init must be .* a model name"),
        ({"iters": 5, "degrade": "jpeg:500"}, "from 1 to 100"),
        # a step's memory is bounded by the machine's before any tensor is made
        ({"iters": 5, "patch_size": 5000}, "needs about .* GiB; this machine has"),
        ({"iters": 5, "batch_size": 10**9}, "needs about .* GiB; this machine has"),
        ({"iters": 5, "save_as": "int8"}, "save_as must be"),
    ],
)
def test_a_bad_stage_is_refused_before_training(stage, message):
    data = {"name": "r", "stage": [{"name": "one", "train": ["T91"], **stage}]}
    with pytest.raises(EdsrError, match=message):
        parse_recipe(data, source="r.toml")


def test_recipe_flags_and_missing_data_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--recipe", "mdsr-baseline-291", "--lr", "1e-3"]) == 1
    assert "--lr does not go with a recipe" in capsys.readouterr().err
    assert main(["train", "--recipe", "no-such-recipe"]) == 1
    assert "mdsr-baseline-291" in capsys.readouterr().err
    out = tmp_path / "r"
    args = ["train", "--recipe", "mdsr-baseline-291", "--out", str(out)]
    assert main([*args, "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no data set 'T91'" in err and "edsr data download T91" in err
    assert not out.exists(), "nothing is written before every stage's data is found"
    # The plan says so too, on one line and before timing a step: a plan the run cannot follow
    # is not a plan (it used to print the table and exit 0).
    assert main([*args, "--data-root", str(tmp_path), "--dry-run", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "no data set 'T91'" in captured.err
    assert captured.out == "" and not out.exists()


def test_miniature_recipe_runs_is_killed_resumes_and_loads(tmp_path, data_root, capsys):
    mini = miniature(load_recipe("mdsr-baseline-291"))
    recipe_file = tmp_path / "mini.toml"
    recipe_file.write_text(mini.to_toml())
    roots = [str(data_root)]

    # The same recipe through the CLI, killed in stage 3 after its checkpoint of step 2.
    killed = tmp_path / "killed"
    threads = str(torch.get_num_threads())  # the same sums as this process, bit for bit
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_STAGE, "train", "--recipe", recipe_file]
        + ["--out", killed, "--data-root", data_root, "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": threads, "KILL_AT": "2", "KILL_IN": "3-mdsr-long"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "2-mdsr" / "model-fp16.safetensors").is_file()
    assert not (killed / "3-mdsr-long" / "model.safetensors").exists()

    # The plan of the killed run says where each stage stands.
    text = plan(load_recipe(killed / "recipe.toml"), killed, data=roots)
    header = next(line for line in text.splitlines() if line.startswith("#"))
    at = header.index(" done ") + 1  # columns are aligned under their names
    rows = [line for line in text.splitlines() if line[:1].isdigit()]
    assert [row[at:].split()[0] for row in rows] == ["3", "4", "2", "0", "0"]
    assert "estimated time to run" in text and "T91" in text

    capsys.readouterr()
    assert main(["train", "--resume", str(killed), "--data-root", *roots, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stage 1/5 edsr-baseline-x2: done" in out and "stage 2/5 mdsr: done" in out
    assert "stage 3/5 mdsr-long: continuing at step 2 of 4" in out

    # The resumed stage equals a straight run of it from the same start, bit for bit.
    cfg = load_config(killed / "3-mdsr-long" / "config.toml")
    cfg.out = str(tmp_path / "straight")
    a = load_file(train(cfg, progress=False))
    b = load_file(killed / "3-mdsr-long" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    what_ships = killed / "model.safetensors"
    assert (
        what_ships.read_bytes()
        == (killed / "5-mdsr-large-patch/model-fp16.safetensors").read_bytes()
    )
    final = load_file(what_ships)
    assert final["body.0.body.0.weight"].dtype == torch.float16  # stored as the bundled file is
    # Each stage started from the one before: its config records the file.
    assert read_toml(killed / "3-mdsr-long" / "config.toml")["init_from"] == str(
        killed / "2-mdsr" / "model-fp16.safetensors"
    )
    assert read_toml(killed / "2-mdsr" / "config.toml")["init_from"] == str(
        killed / "1-edsr-baseline-x2" / "model.safetensors"
    )

    model = load_model(killed / "model.safetensors", device="cpu")
    x = torch.rand(1, 3, 10, 12) * 255
    assert model(x, 3).shape == (1, 3, 30, 36)
    assert not torch.equal(
        load_file(killed / "1-edsr-baseline-x2" / "model.safetensors")["body.0.body.0.weight"],
        load_file(killed / "2-mdsr" / "model.safetensors")["body.0.body.0.weight"],
    ), "stage 2 trained on"


def test_a_recipe_folder_is_continued_not_started_over_and_may_gain_stages(
    tmp_path, data_root, capsys
):
    mini = miniature(load_recipe("mdsr-baseline-291"), iters=(1, 1, 1, 1, 1))
    one, two = (dataclasses.replace(mini, stages=mini.stages[:n]) for n in (1, 2))
    roots = [str(data_root)]
    run_recipe(one, tmp_path / "r", data=roots, progress=False)
    with pytest.raises(EdsrError, match="--resume"):
        run_recipe(one, tmp_path / "r", data=roots, progress=False)
    other = dataclasses.replace(mini, stages=mini.stages[1:2])
    with pytest.raises(EdsrError, match="other stages"):
        run_recipe(other, tmp_path / "r", data=roots, resume=True, progress=False)
    capsys.readouterr()
    final = run_recipe(two, tmp_path / "r", data=roots, resume=True, progress=False)
    assert "stage 1/2 edsr-baseline-x2: done" in capsys.readouterr().out
    assert load_model(final, device="cpu").config()["arch"] == "mdsr"

    # Stage 2 with every checkpoint damaged starts again from stage 1's model, as it began.
    first = load_file(final)
    stage2 = tmp_path / "r" / "2-mdsr"
    for name in ("model.safetensors", "model-fp16.safetensors"):
        (stage2 / name).unlink()
    for state in (stage2 / "checkpoints").glob("state-*.pt"):
        state.write_bytes(b"damaged")
    run_recipe(two, tmp_path / "r", data=roots, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "no intact checkpoint" in out and "init from" in out
    again = load_file(final)
    assert all(torch.equal(first[k], again[k]) for k in first)
