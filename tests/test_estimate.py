"""The long-job estimate times the pass the job runs: the prepared model (its precision, the
fused path), the self-ensemble, the job's tile; a job of several tiles is timed on its first."""

import time

import pytest
import torch
from PIL import Image

from conftest import DATA
from edsr.inference import estimate as estimate_module
from edsr.inference import plan_job, prepare_model, upscale_image_file
from edsr.inference.estimate import Announcer, JobEstimate
from edsr.models import EDSR


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return EDSR(scale=2, n_resblocks=2, n_feats=16).eval()


def _calls(module, log):
    return module.register_forward_hook(lambda m, args, out: log.append(tuple(args[0].shape)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_timing_run_is_the_jobs_own_pass(model, monkeypatch, precision):
    """Every timed pass goes through the prepared model the job runs (its fused forward, not
    the eager layers under it), 8 forwards a pass with the ensemble, no input larger than the
    job's tile; a second estimate of the same job times nothing again."""
    monkeypatch.setattr(estimate_module, "_NEVER_LONG_MACS", 0)  # a timing run for any job
    monkeypatch.setattr(estimate_module, "_REFINE_AFTER", 0.0)  # and the tile-sized passes
    prepared = prepare_model(model, precision=precision)
    assert prepared.fused  # the path a CPU job runs
    job, eager = [], []
    hooks = [_calls(prepared, job), _calls(prepared.base, eager)]
    try:
        est = plan_job(prepared, (1, 3, 90, 140), 2, ensemble=True)
        window = (est.plan.rows[0].stop - est.plan.rows[0].start, est.plan.cols[0].stop)
        eager = [s for s in eager if s[-2:] != (1, 1)]  # the layer probe's 1x1 pass aside
        assert job and not eager, "timed the eager layers, not the path the job runs"
        passes = estimate_module._PASSES[prepared]
        ensemble_passes = [k for k in passes if k[1]]
        assert ensemble_passes, "the job's self-ensemble was not timed"
        assert all(k[2] <= window[0] and k[3] <= window[1] for k in ensemble_passes)
        sizes = {s[-2:] for s in job}
        h, w = ensemble_passes[-1][2:]
        assert {(h, w), (w, h)} <= sizes  # the ensemble's turned copies went through it too
        n = len(job)
        again = plan_job(prepared, (1, 3, 90, 140), 2, ensemble=True)
        assert len(job) == n and again.seconds == est.seconds  # measured once, kept
    finally:
        for hook in hooks:
            hook.remove()


def test_a_long_job_is_said_before_it_starts_and_checked_on_its_tiles(monkeypatch):
    monkeypatch.setattr(estimate_module, "LONG_JOB_SECONDS", 0.1)
    stub = JobEstimate(plan=None, tiles=4, memory=1 << 20, seconds=1000.0)  # type: ignore[arg-type]
    lines = []
    announce = Announcer(stub, lines.append, "a.png")
    announce(0, 4)
    assert lines == ["a.png: about 17 min: 4 tiles, 1.0 MiB working memory"]  # before any work
    time.sleep(0.2)
    announce(1, 4)  # the first tile says 4 x 0.2 s, far from 1000 s: revised
    assert len(lines) == 2 and lines[1].startswith("a.png: revised, about ")
    assert 0.8 <= announce.said.seconds < 2.0
    time.sleep(0.2)
    announce(2, 4)  # the second tile agrees: no further line
    announce(3, 4)
    assert len(lines) == 2
    # an estimate the first tile confirms is not said again
    close = JobEstimate(plan=None, tiles=2, memory=1 << 20, seconds=0.4)  # type: ignore[arg-type]
    kept = []
    ok = Announcer(close, kept.append, "d.png")
    ok(0, 2)
    time.sleep(0.2)
    ok(1, 2)
    assert len(kept) == 1
    # a first tile that paid for a cold start (a compiler, say) is revised by the second
    revised = []
    cold = Announcer(stub, revised.append, "c.png")
    cold(0, 4)
    time.sleep(0.4)
    cold(1, 4)
    time.sleep(0.02)
    cold(2, 4)
    assert len(revised) == 3 and revised[2].startswith("c.png: revised, about ")
    assert 0.4 <= cold.said.seconds < 1.0  # the first tile, then 3 of the second's time
    # one tile: said at its start, from the estimate
    one = []
    Announcer(JobEstimate(None, 1, 1, 1000.0), one.append, "b.png")(0, 1)  # type: ignore[arg-type]
    assert one == ["b.png: about 17 min: 1 tile, 1 B working memory"]


def test_the_job_runs_the_plan_it_was_estimated_on(tmp_path, model, monkeypatch):
    src = tmp_path / "in.png"
    Image.open(DATA / "Set5/HR/bird.png").crop((0, 0, 200, 180)).save(src)
    monkeypatch.setattr(estimate_module, "LONG_JOB_SECONDS", 0.0)
    est = plan_job(model, (1, 3, 180, 200), 2, max_tile_seconds=1e-4)
    assert est.tiles > 1
    totals, lines = [], []
    monkeypatch.setattr("edsr.inference.files.PROGRESS_TILE_SECONDS", 1e-4)
    upscale_image_file(
        src,
        tmp_path / "out.png",
        model,
        on_tile=lambda done, total: totals.append(total),
        say=lines.append,
    )
    assert set(totals) == {est.tiles}
    assert lines and all(f"{est.tiles} tiles" in line for line in lines)  # (a revision too)
