"""Training: the recipe's pieces, exact resume after kill -9, DDP equivalence, MDSR branches."""

import csv
import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, crop_set
from edsr import EdsrError, build_model, save_model
from edsr.cli import main
from edsr.training.config import TrainConfig, read_toml, resolve, to_toml
from edsr.training.loop import learning_rate, train
from local_server import torchrun_cmd

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# Runs the CLI in a child that SIGKILLs itself right after the checkpoint of step KILL_AT is on
# disk, as a power cut or the OOM killer would: the fault lives here, not in the product.
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from edsr.cli import main
from edsr.training.run import RunFolder
save, kill_at = RunFolder.save_checkpoint, int(os.environ["KILL_AT"])
def save_then_die(self, state, step, keep=2):
    path = save(self, state, step, keep)
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
RunFolder.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def small_val(tmp_path_factory):
    """Validation crops of real Set5 images: full Set5 would dominate these tests' time."""
    return str(crop_set(tmp_path_factory.mktemp("val"), ("bird", "head"), (60, 60, 108, 108)))


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        preset="edsr-baseline",
        scales=[2],
        train=[str(DATA / "Set5")],
        out=str(tmp_path / "run"),
        iters=6,
        batch_size=4,
        patch_size=8,
        val_every=1000,
        checkpoint_every=3,
        log_every=1,
        precision="fp32",
        cache_dir=str(tmp_path / "cache"),
    )
    base.update(kw)
    return TrainConfig(**base)


def cli(*args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "edsr", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def flags(cfg: TrainConfig) -> list[str]:
    return [
        "--preset",
        cfg.preset,
        "--scale",
        *map(str, cfg.scales),
        "--train",
        *cfg.train,
        "--out",
        cfg.out,
        "--iters",
        str(cfg.iters),
        "--batch-size",
        str(cfg.batch_size),
        "--patch-size",
        str(cfg.patch_size),
        "--val-every",
        str(cfg.val_every),
        "--checkpoint-every",
        str(cfg.checkpoint_every),
        "--log-every",
        "1",
        "--precision",
        cfg.precision,
        "--cache-dir",
        cfg.cache_dir,
        "--lr-decay-every",
        str(cfg.lr_decay_every),
        "--quiet",
    ]


def test_learning_rate_halves_on_schedule():
    cfg = TrainConfig(train=["x"], lr=1e-4, lr_decay_every=200_000)
    assert learning_rate(cfg, 0) == learning_rate(cfg, 199_999) == 1e-4
    assert learning_rate(cfg, 200_000) == 5e-5 and learning_rate(cfg, 400_000) == 2.5e-5


def test_cosine_schedule_falls_from_lr_to_lr_min_over_the_run():
    cfg = TrainConfig(train=["x"], iters=1000, lr=2e-5, lr_schedule="cosine", lr_min=1e-6)
    rates = [learning_rate(cfg, s) for s in range(0, 1001, 50)]
    assert rates[0] == pytest.approx(2e-5) and rates[-1] == pytest.approx(1e-6)
    assert learning_rate(cfg, 500) == pytest.approx((2e-5 + 1e-6) / 2)  # halfway: the mean
    assert all(a > b for a, b in zip(rates[:-1], rates[1:], strict=True))
    for bad in ({"lr_schedule": "linear"}, {"lr_min": 3e-4}, {"lr_min": -1.0}):
        with pytest.raises(EdsrError, match="lr_schedule|lr_min"):
            TrainConfig(train=["x"], **bad).validate()


def test_resume_after_kill_9_gives_identical_weights(tmp_path):
    # The learning rate halves inside the run, so a resume that halved it again would differ.
    straight = tiny_cfg(tmp_path / "a", lr_decay_every=2)
    cli("train", *flags(straight))
    broken = tiny_cfg(tmp_path / "b", lr_decay_every=2)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHECKPOINT, "train", *flags(broken)],
        capture_output=True,
        text=True,
        env={**ENV, "KILL_AT": "3"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (tmp_path / "b" / "run" / "checkpoints" / "state-00000003.pt").exists()
    assert not (tmp_path / "b" / "run" / "model.safetensors").exists()
    cli("train", "--resume", broken.out, "--quiet")
    a = load_file(tmp_path / "a" / "run" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [
        int(r["step"])
        for r in csv.DictReader((tmp_path / "b" / "run" / "log.csv").read_text().splitlines())
    ]
    assert steps == list(range(1, 7)), "the log continues without gaps or duplicates"


def test_damaged_checkpoint_falls_back_to_previous(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, iters=6, checkpoint_every=2)
    train(cfg, progress=False)
    states = sorted((tmp_path / "run" / "checkpoints").glob("state-*.pt"))
    assert [p.name for p in states] == ["state-00000004.pt", "state-00000006.pt"]
    states[-1].write_bytes(states[-1].read_bytes()[:1000])
    train(resume=tmp_path / "run", iters=8, progress=False)
    out = capsys.readouterr().out
    assert "state-00000006.pt is damaged" in out and "resumed" in out and "at step 4" in out


def test_ddp_two_ranks_match_one_process(tmp_path):
    one = tiny_cfg(tmp_path / "one", iters=3, batch_size=8)
    cli("train", *flags(one))
    two = tiny_cfg(tmp_path / "two", iters=3, batch_size=8)
    proc = subprocess.run(
        torchrun_cmd("train", *flags(two)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(tmp_path / "one" / "run" / "model.safetensors")
    b = load_file(tmp_path / "two" / "run" / "model.safetensors")
    init = build_model("edsr-baseline", scale=2)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - init.state_dict()[k]).abs().max().item() for k in a if "mean" not in k)
    assert worst < 1e-5 < moved, (worst, moved)


def test_mdsr_trains_only_the_drawn_branch_and_every_branch_learns(tmp_path, small_val):
    from edsr.training.data import PatchDataset

    cfg = tiny_cfg(
        tmp_path, preset="mdsr-baseline", scales=[2, 3, 4], iters=1, checkpoint_every=1, val_every=1
    )
    cfg.val = small_val
    data = PatchDataset(
        cfg.train, cfg.scales, patch_size=8, cache_dir=cfg.cache_dir, progress=False
    )
    drawn = [data.batch(i, 4, seed=0)[0] for i in range(12)]
    torch.manual_seed(0)
    init = build_model("mdsr-baseline").state_dict()
    train(cfg, progress=False)
    after1 = load_file(tmp_path / "run" / "model.safetensors")
    for k, s in enumerate((2, 3, 4)):
        changed = not torch.equal(
            after1[f"pre_process.{k}.0.body.0.weight"], init[f"pre_process.{k}.0.body.0.weight"]
        )
        up_changed = not torch.equal(
            after1[f"upsample.{k}.0.weight"], init[f"upsample.{k}.0.weight"]
        )
        assert changed == up_changed == (s == drawn[0]), (s, drawn[0])
    assert not torch.equal(after1["body.0.body.0.weight"], init["body.0.body.0.weight"])
    assert set(drawn) == {2, 3, 4}
    n = max(drawn.index(s) for s in (2, 3, 4)) + 1
    train(resume=tmp_path / "run", iters=n, progress=False)
    final = load_file(tmp_path / "run" / "model.safetensors")
    for k in range(3):
        assert not torch.equal(
            final[f"pre_process.{k}.1.body.2.weight"], init[f"pre_process.{k}.1.body.2.weight"]
        )
        assert not torch.equal(final[f"upsample.{k}.0.weight"], init[f"upsample.{k}.0.weight"])
    rows = list(csv.DictReader((tmp_path / "run" / "val.csv").read_text().splitlines()))
    assert {r["scale"] for r in rows} == {"2", "3", "4"}
    assert (tmp_path / "run" / "psnr.png").stat().st_size > 1000 and (
        tmp_path / "run" / "loss.png"
    ).exists()


def test_finished_run_feeds_eval_and_upscale(tmp_path, small_val):
    cfg = tiny_cfg(tmp_path, iters=2, val_every=2)
    cfg.val = small_val
    model_path = train(cfg, progress=False)
    proc = cli("eval", "--model", model_path, "--data", small_val, "--scale", "2", "--quiet")
    assert "x2" in proc.stdout
    cli(
        "upscale",
        DATA / "Set5" / "HR" / "bird.png",
        "-o",
        tmp_path / "up",
        "--model",
        model_path,
        "--quiet",
    )
    assert (tmp_path / "up" / "bird_x2.png").exists()
    saved = read_toml(tmp_path / "run" / "config.toml")
    assert saved["iters"] == 2 and saved["preset"] == "edsr-baseline" and saved["val"] == small_val
    # The chart's dashed line is bicubic on the same validation set, as `edsr eval` scores it.
    from edsr.evaluate import evaluate

    rows = list(csv.DictReader((tmp_path / "run" / "bicubic.csv").read_text().splitlines()))
    want = evaluate("bicubic", [small_val], [2], progress=False)["results"][0]["psnr"]
    assert [r["scale"] for r in rows] == ["2"] and float(rows[0]["psnr"]) == pytest.approx(
        want, abs=1e-4
    )


def test_init_from_x2_skips_only_the_upsampler(tmp_path, capsys):
    x2 = build_model("edsr-baseline", scale=2)
    save_model(x2, tmp_path / "x2.safetensors")
    cfg = tiny_cfg(
        tmp_path, scales=[3], iters=1, lr=1e-12, init_from=str(tmp_path / "x2.safetensors")
    )
    train(cfg, progress=False)
    out = capsys.readouterr().out
    skipped = [
        line.split("skipped ", 1)[1] for line in out.splitlines() if line.startswith("  skipped ")
    ]
    assert [s.split(":")[0] for s in skipped] == ["tail.0.0.weight", "tail.0.0.bias"]
    assert "upsampler" in skipped[0]
    got = load_file(tmp_path / "run" / "model.safetensors")
    assert (
        got["body.3.body.0.weight"] - x2.state_dict()["body.3.body.0.weight"]
    ).abs().max() < 1e-6


def test_init_from_edsr_x2_starts_an_mdsr_and_back(tmp_path, capsys):
    from edsr.weights.transfer import init_from

    x2 = build_model("edsr-baseline", scale=2)
    save_model(x2, tmp_path / "x2.safetensors")
    src = x2.state_dict()
    mdsr = build_model("mdsr-baseline", scale=2, scales=(2, 3, 4))
    skipped = init_from(mdsr, str(tmp_path / "x2.safetensors")).skipped
    got = mdsr.state_dict()
    # EDSR's upsampler and final conv sit at tail.0 / tail.1; MDSR's at upsample.0 / tail.0.
    assert torch.equal(got["upsample.0.0.weight"], src["tail.0.0.weight"])
    assert torch.equal(got["tail.0.weight"], src["tail.1.weight"])
    assert torch.equal(got["body.15.body.2.weight"], src["body.15.body.2.weight"])
    assert torch.equal(got["head.0.weight"], src["head.0.weight"])
    keys = {line.split(":")[0] for line in skipped}
    assert keys == {k for k in got if k.startswith(("pre_process.", "upsample.1.", "upsample.2."))}
    assert any("x3 upsampler" in line and "trained from scratch" in line for line in skipped)

    # ... and an MDSR's x3 branch starts an EDSR x3, upsampler included.
    save_model(mdsr, tmp_path / "mdsr.safetensors")
    x3 = build_model("edsr-baseline", scale=3)
    assert init_from(x3, str(tmp_path / "mdsr.safetensors")).skipped == ()
    assert torch.equal(x3.state_dict()["tail.0.0.weight"], got["upsample.1.0.weight"])
    assert torch.equal(x3.state_dict()["tail.1.weight"], got["tail.0.weight"])
    capsys.readouterr()


def test_nan_loss_batch_is_skipped(tmp_path, monkeypatch, capsys):
    import edsr.training.loop as T

    real = T.F.l1_loss
    calls = {"n": 0}

    def flaky(a, b):
        calls["n"] += 1
        loss = real(a, b)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(T.F, "l1_loss", flaky)
    train(tiny_cfg(tmp_path, iters=4, checkpoint_every=4), progress=False)
    assert "step 1: loss nan" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").read_text().splitlines()))
    assert rows[-1]["skipped"] == "1"
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_config_file_flags_and_unknown_keys(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'preset = "mdsr-baseline"\nscales = [2, 4]\ntrain = ["a"]\niters = 50\nlr = 2e-4\n'
    )
    cfg = resolve(None, None, str(f), {"iters": 70})
    assert (
        cfg.preset == "mdsr-baseline"
        and cfg.scales == [2, 4]
        and cfg.iters == 70
        and cfg.lr == 2e-4
    )
    assert cfg.batch_size == 16 and cfg.patch_size == 48 and cfg.lr_decay_every == 200_000
    (tmp_path / "round.toml").write_text(to_toml(cfg))
    assert resolve(None, None, str(tmp_path / "round.toml"), {}) == cfg
    f.write_text('train = ["a"]\nlearning_rate = 1\n')
    with pytest.raises(EdsrError, match="unknown config key.*learning_rate"):
        resolve(None, None, str(f), {})
    f.write_text('train = ["a"]\niters = "many"\n')
    with pytest.raises(EdsrError, match="iters.*expected int"):
        resolve(None, None, str(f), {})
    with pytest.raises(EdsrError, match="single-scale"):
        resolve("edsr", [2, 3], None, {"train": ["a"]})


def test_bad_training_input(tmp_path):
    (tmp_path / "empty").mkdir()
    p = cli(
        "train",
        "--preset",
        "edsr-baseline",
        "--scale",
        "2",
        "--train",
        tmp_path / "empty",
        "--out",
        tmp_path / "r",
        "--quiet",
        check=False,
    )
    assert p.returncode == 1 and "no images in training directory" in p.stderr
    assert p.stderr.count("\n") == 1
    p = cli(
        "train",
        "--scale",
        "2",
        "--train",
        DATA / "Set5",
        "--val",
        tmp_path / "missing",
        "--out",
        tmp_path / "r",
        "--quiet",
        check=False,
    )
    assert p.returncode == 1 and "validation directory" in p.stderr and "does not exist" in p.stderr
    cfg = tiny_cfg(tmp_path, iters=1)
    train(cfg, progress=False)
    p = cli("train", *flags(cfg), check=False)
    assert p.returncode == 1 and "already holds a training run" in p.stderr
    p = cli("train", "--resume", tmp_path / "nothing", check=False)
    assert p.returncode == 1 and "not a training run" in p.stderr
    p = cli(
        "train",
        "--scale",
        "2",
        "--train",
        DATA / "Set5",
        "--precision",
        "fp16",
        "--out",
        tmp_path / "r2",
        "--quiet",
        check=False,
    )
    assert p.returncode == 1 and (
        "fp16 training needs a CUDA GPU" in p.stderr or torch.cuda.is_available()
    )


def test_init_from_a_file_that_is_no_model_is_named_and_read_before_the_data(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, iters=1)
    cache, out = Path(cfg.cache_dir), Path(cfg.out)
    assert main(["train", *flags(cfg), "--quiet", "--init-from", "/etc/passwd"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/etc/passwd looks like text, not a model" in err
    assert "--init-from takes a checkpoint" in err and "--model" not in err, err
    assert not cache.exists() and not out.exists()  # refused before a training image was decoded


def test_a_failed_start_leaves_nothing_and_a_folder_without_checkpoint_is_no_run(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = tiny_cfg(tmp_path, iters=1)
    run = Path(cfg.out)
    # Each of these fails before anything is written: no run folder, no config.toml.
    for change, message in [
        ({"val": str(tmp_path / "empty")}, "no images in validation directory"),
        (
            {"init_from": str(tmp_path / "missing.safetensors")},
            "missing.safetensors does not exist",
        ),
        ({"scales": [5]}, "scale 5 is not supported"),
        ({"preset": "edsr-huge"}, "unknown preset"),
        ({"train": [str(tmp_path / "empty")]}, "no images in training directory"),
    ]:
        with pytest.raises(EdsrError, match=message):
            train(dataclasses.replace(cfg, **change), progress=False)
        assert not run.exists(), change
    # What an older version's failed start left (config and logs, no checkpoint) is not a run:
    # the corrected start is not refused, and the leftovers do not leak into its logs.
    run.mkdir()
    (run / "config.toml").write_text(to_toml(cfg))
    (run / "log.csv").write_text("step,loss,lr,sec_per_iter,skipped\n7,1.0,1e-4,0.1,0\n")
    train(cfg, progress=False)
    steps = [r["step"] for r in csv.DictReader((run / "log.csv").read_text().splitlines())]
    assert steps == ["1"] and (run / "model.safetensors").exists()


# SIGTERM is what `timeout`, `docker stop` and SLURM send: handled like Ctrl-C, and the exit
# status says which it was (143 terminated, 130 interrupted).
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_saves_a_checkpoint_and_resume_continues(tmp_path, sig):
    cfg = tiny_cfg(tmp_path, iters=100000, checkpoint_every=100000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edsr", "train", *flags(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    log = tmp_path / "run" / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    expected = 143 if sig == signal.SIGTERM else 130
    assert proc.returncode == expected and "checkpoint saved" in out + err, err[-2000:]
    assert "--resume" in out + err and "Traceback" not in err
    states = list((tmp_path / "run" / "checkpoints").glob("state-*.pt"))
    assert len(states) == 1
    at = int(states[0].stem.split("-")[1])
    assert at >= 2
    cli("train", "--resume", cfg.out, "--iters", str(at + 2), "--quiet")
    rows = list(csv.DictReader(log.read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == list(range(1, at + 3))
    assert load_file(tmp_path / "run" / "model.safetensors")


def test_disk_full_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing a checkpoint: one line naming it, exit 1, the previous one intact."""
    from edsr.cli import main

    cfg = tiny_cfg(tmp_path, iters=6, checkpoint_every=2)
    real_save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4:
            f.write(b"\0" * 4096)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code = main(["train", *flags(cfg)])
    # train() installs its SIGINT/SIGTERM handlers for its own duration only, failure included.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "disk full while writing" in err and "state-00000004.pt" in err
    ckdir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == [
        "state-00000002.pt",
        "state-00000002.pt.sha256",
    ]
    assert (
        not list((tmp_path / "run").rglob("*.tmp"))
        and not (tmp_path / "run" / "model.safetensors").exists()
    )
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", cfg.out, "--quiet"]) == 0
    assert "at step 2" in capsys.readouterr().out
    straight = tiny_cfg(tmp_path / "straight", iters=6, checkpoint_every=2)
    train(straight, progress=False)
    a = load_file(tmp_path / "run" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "run" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from step 2 exactly"
