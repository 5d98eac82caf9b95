"""Configs are claims, tensors are facts: a file whose embedded config does not describe its
weights is refused on one line before any model is built (no gigabytes for a lying config)."""

import json
import subprocess
import sys

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edsr import CheckpointError, load_model, save_model
from sr_helpers import small_mdsr


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    path = tmp_path_factory.mktemp("claims") / "good.safetensors"
    save_model(small_mdsr(), path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return path, meta, load_file(str(path))


@pytest.mark.parametrize(
    "lie, message",
    [
        ({"n_resblocks": 10**7}, "n_resblocks = 10000000, its tensors hold 2"),
        ({"n_feats": 10**6}, "n_feats = 1000000, its tensors hold 16"),
        ({"scales": [2]}, r"scales = \(2,\), its tensors hold \(2, 3, 4\)"),
        ({"arch": "edsr", "scale": 2}, "arch = 'edsr', its tensors hold 'mdsr'"),
        ([1, 2], "its model config is list, not an object"),
    ],
)
def test_a_lying_config_is_one_line(honest, tmp_path, lie, message):
    path, meta, tensors = honest
    config = lie if isinstance(lie, list) else {**json.loads(meta["config"]), **lie}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match=message):
        load_model(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "edsr", "upscale", str(bad), "-o", str(tmp_path / "o"),
         "--model", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "does not describe these weights" in proc.stderr or "not an object" in proc.stderr
    assert load_model(path).config()["n_resblocks"] == 2  # the honest file still loads
