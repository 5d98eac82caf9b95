"""Download, cache and import, end to end against an HTTP server on 127.0.0.1.

The server runs in a daemon thread for one test and is shut down after it (a watchdog stops
it anyway after a minute); no test ever contacts the real download addresses.
"""

import dataclasses
import hashlib
import io
from pathlib import Path

import pytest
import torch

from edsr import EdsrError, build_model, load_model
from edsr.cli import main
from edsr.io.cache import sha256_file
from edsr.models import EDSR, Preset
from edsr.weights import (
    REGISTRY,
    WeightsEntry,
    download_weights,
    import_checkpoint,
    is_cached,
    load_weights,
    verify_file,
    weights_path,
)
from edsr.weights import download as download_module
from edsr.weights.download import cache_dir, hash_matches
from local_server import refused_url


@pytest.fixture
def server(local_server):
    return local_server


@pytest.fixture
def home(edsr_home):
    return edsr_home / "weights"


@pytest.fixture(scope="module")
def checkpoint():
    """A real official-layout checkpoint (bare state dict, torch.save): its bytes and model."""
    torch.manual_seed(0)
    model = build_model("edsr-baseline", scale=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), model


def _entry(urls, body, **kw) -> WeightsEntry:
    digest = hashlib.sha256(body).hexdigest()
    fields = dict(
        name="test-edsr-baseline-x2",
        preset="edsr-baseline",
        scales=(2,),
        filename=f"test_x2-{digest[:8]}.pt",
        sha256=digest[:8],  # a prefix only, as for the official files
        parameters=1_369_859,
        license="test",
        source="official",
        urls=tuple(urls),
    )
    fields.update(kw)
    return WeightsEntry(**fields)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def _same_outputs(a, b) -> bool:
    x = torch.rand(1, 3, 7, 9) * 255
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_cache_dir_per_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("EDSR_HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "h" / "weights"
    monkeypatch.delenv("EDSR_HOME")
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    monkeypatch.setattr(download_module.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edsr" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / ".cache" / "edsr" / "weights"
    monkeypatch.setattr(download_module.sys, "platform", "darwin")
    assert cache_dir() == tmp_path / "Library" / "Caches" / "edsr" / "weights"
    monkeypatch.setattr(download_module.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert cache_dir() == tmp_path / "local" / "edsr" / "weights"


def test_hash_prefix_is_compared_against_the_full_digest():
    d = hashlib.sha256(b"abc").hexdigest()
    assert hash_matches(d, d) and hash_matches(d, d[:8]) and hash_matches(d.upper(), d[:12])
    assert not hash_matches(d, d[1:9]) and not hash_matches(d, d[:7]) and not hash_matches(d, "")


def test_good_file_downloads_verifies_and_loads(server, home, checkpoint, capsys):
    body, ref = checkpoint
    server.routes["/good.pt"] = ("ok", body)
    e = _entry([server.url("/good.pt")], body)
    path = download_weights(e, progress=True)
    assert path == home / e.filename == weights_path(e)
    assert path.read_bytes() == body
    assert _files(home) == sorted([e.filename, e.filename + ".sha256.json"])
    assert "test_x2-" in capsys.readouterr().err  # the progress bar names the file
    # Cached now: no second request, and the marker spares hashing the file again.
    assert download_weights(e) == path and server.paths == ["/good.pt"]
    assert is_cached(e)
    model = load_weights(e, scale=2)
    assert isinstance(model, EDSR) and _same_outputs(model, ref)


def test_full_hash_and_registry_name_through_load_model(server, home, checkpoint, monkeypatch):
    body, ref = checkpoint
    server.routes["/good.pt"] = ("ok", body)
    e = _entry([server.url("/good.pt")], body, sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(REGISTRY, e.name, e)
    model = load_model("test-edsr-baseline-x2", device="cpu", progress=False)
    assert _same_outputs(model, ref)
    assert main(["weights", "download", "test-edsr-baseline-x2", "--quiet"]) == 0
    assert server.paths == ["/good.pt"]
    with pytest.raises(
        EdsrError, match="test-edsr-baseline-x2 is an x2 model; it cannot upscale x3"
    ):
        load_model("test-edsr-baseline-x2", scale=3, device="cpu")
    out = home.parent / "by-name.safetensors"
    assert main(["weights", "import", "test-edsr-baseline-x2", "-o", str(out), "--quiet"]) == 0
    assert _same_outputs(load_model(out), ref) and server.paths == ["/good.pt"]


def test_registry_res_scale_is_applied_to_an_official_layout_file(server, home, monkeypatch):
    """A 2x8 EDSR file looks like res_scale 1.0 by shape; the registry says 0.1 and wins."""
    torch.manual_seed(1)
    ref = EDSR(scale=2, n_resblocks=2, n_feats=8, res_scale=0.1).eval()
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    body = buf.getvalue()
    server.routes["/small.pt"] = ("ok", body)
    e = _entry(
        [server.url("/small.pt")],
        body,
        preset=Preset("test-2x8", "edsr", 2, 8, 1.0, "2 blocks x 8 features"),
        res_scale=0.1,
        parameters=sum(p.numel() for p in ref.parameters() if p.requires_grad),
    )
    model = load_weights(e, progress=False)
    assert model.res_scale == 0.1 and _same_outputs(model, ref)
    assert load_model(weights_path(e)).res_scale == 1.0  # what shape detection alone gives
    assert load_weights(e, res_scale=0.5, progress=False).res_scale == 0.5  # explicit override
    # Import picks the registry's settings too, by recognising the file's hash.
    monkeypatch.setitem(REGISTRY, e.name, e)
    out, config = import_checkpoint(weights_path(e), home.parent / "small.safetensors")
    assert config["res_scale"] == 0.1 and _same_outputs(load_model(out), ref)


def test_wrong_hash_is_rejected_and_nothing_is_kept(server, home, checkpoint):
    body, _ = checkpoint
    server.routes["/good.pt"] = ("ok", body)
    e = _entry([server.url("/good.pt")], body, sha256="deadbeef")
    with pytest.raises(EdsrError) as info:
        download_weights(e, progress=False)
    msg = str(info.value)
    assert "SHA-256 mismatch" in msg and server.url("/good.pt") in msg and "\n" not in msg
    assert str(home / e.filename) in msg  # where to put a file downloaded by hand
    assert _files(home) == []


def test_truncated_transfer_is_rejected_and_nothing_is_kept(server, home, checkpoint):
    body, _ = checkpoint
    server.routes["/cut.pt"] = ("truncated", body, len(body) + 1000)
    e = _entry([server.url("/cut.pt")], body)
    with pytest.raises(EdsrError, match="truncated"):
        download_weights(e, progress=False)
    assert _files(home) == []


def test_404_then_mirror_succeeds(server, home, checkpoint):
    body, ref = checkpoint
    server.routes["/mirror/good.pt"] = ("ok", body)
    e = _entry([server.url("/gone.pt"), server.url("/mirror/good.pt")], body)
    path = download_weights(e, progress=False)
    assert server.paths == ["/gone.pt", "/mirror/good.pt"]
    assert sha256_file(path) == hashlib.sha256(body).hexdigest()
    assert _same_outputs(load_weights(e, progress=False), ref)


def test_every_failure_kind_falls_through_to_the_next_address(server, home, checkpoint):
    body, _ = checkpoint
    server.routes.update(
        {
            "/500.pt": ("status", 500),
            "/cut.pt": ("truncated", body, len(body) + 1),
            "/bad.pt": ("ok", body[:-1] + b"!"),
            "/stall.pt": ("stall", 2.0),
            "/good.pt": ("ok", body),
        }
    )
    order = ["/500.pt", "/cut.pt", "/bad.pt", "/stall.pt", "/good.pt"]
    e = _entry([server.url(p) for p in order], body)
    assert download_weights(e, progress=False, timeout=0.3).read_bytes() == body
    assert server.paths == order
    assert _files(home) == sorted([e.filename, e.filename + ".sha256.json"])
    stalled = _entry([server.url("/stall.pt")], body, filename="other.pt")
    with pytest.raises(EdsrError, match=r"stall.pt \(timed out\)"):
        download_weights(stalled, progress=False, timeout=0.3)


def test_a_redirect_loop_is_one_line(server, home, checkpoint, capsys, monkeypatch):
    body, _ = checkpoint
    server.routes.update({"/a.pt": ("redirect", "/b.pt"), "/b.pt": ("redirect", "/a.pt")})
    e = _entry([server.url("/a.pt")], body)
    monkeypatch.setitem(REGISTRY, e.name, e)
    assert main(["weights", "download", e.name, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{server.url('/a.pt')} (a redirect loop: HTTP 302 after " in err
    assert _files(home) == []


def test_server_down_gives_one_clear_line_with_addresses_and_path(
    home, checkpoint, capsys, monkeypatch
):
    body, _ = checkpoint
    urls = [refused_url("/a.pt"), refused_url("/b.pt")]
    e = _entry(urls, body)
    with pytest.raises(EdsrError) as info:
        download_weights(e, progress=False)
    msg = str(info.value)
    assert all(f"{u} (connection refused)" in msg for u in urls)
    assert f"place it at {home / e.filename}" in msg and e.sha256 in msg and "\n" not in msg
    assert _files(home) == []
    # The same through the CLI: one line, exit 1.
    monkeypatch.setitem(REGISTRY, e.name, e)
    assert main(["weights", "download", e.name, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edsr: error: could not download weights") and err.count("\n") == 1


def test_manual_placement_works_offline(home, checkpoint, monkeypatch):
    body, ref = checkpoint
    e = _entry([refused_url("/never.pt")], body)
    monkeypatch.setenv("EDSR_OFFLINE", "1")
    with pytest.raises(EdsrError, match="EDSR_OFFLINE"):
        download_weights(e)
    home.mkdir(parents=True)
    (home / e.filename).write_bytes(body)  # what the error message tells the user to do
    assert download_weights(e) == home / e.filename
    assert _same_outputs(load_weights(e), ref)


def test_damaged_cached_file_is_not_trusted(server, home, checkpoint):
    body, _ = checkpoint
    server.routes["/good.pt"] = ("ok", body)
    e = _entry([server.url("/good.pt")], body)
    path = download_weights(e, progress=False)
    # Damage the file behind the marker's back: same size, new content, new mtime.
    path.write_bytes(b"\0" * len(body))
    assert verify_file(path, e) is None and not is_cached(e)
    assert download_weights(e, progress=False).read_bytes() == body
    assert server.paths == ["/good.pt", "/good.pt"]


def test_wrong_file_in_cache_is_reported_when_download_fails(home, checkpoint):
    body, _ = checkpoint
    e = _entry([refused_url("/x.pt")], body)
    home.mkdir(parents=True)
    (home / e.filename).write_bytes(b"not the weights")
    with pytest.raises(EdsrError, match="already there does not match"):
        download_weights(e, progress=False)
    assert (home / e.filename).read_bytes() == b"not the weights"  # left for the user to inspect


def test_interrupted_download_leaves_nothing(server, home, checkpoint, monkeypatch):
    body, _ = checkpoint
    server.routes["/good.pt"] = ("ok", body)
    e = _entry([server.url("/good.pt")], body)

    def interrupted(url, dest, entry, **kw):
        dest.write_bytes(body[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(download_module, "_fetch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_weights(e, progress=False)
    assert _files(home) == []


def test_size_known_in_registry_rejects_a_different_length(server, home, checkpoint):
    body, _ = checkpoint
    server.routes["/good.pt"] = ("ok", body)
    e = _entry([server.url("/good.pt")], body, size=len(body) + 1)
    with pytest.raises(EdsrError, match="expected"):
        download_weights(e, progress=False)
    assert _files(home) == []
    assert download_weights(dataclasses.replace(e, size=len(body)), progress=False).exists()


def test_cli_import_converts_and_refuses_to_overwrite(tmp_path, checkpoint, capsys):
    body, ref = checkpoint
    src = tmp_path / "official.pt"
    src.write_bytes(body)
    out = tmp_path / "model.safetensors"
    assert main(["weights", "import", str(src), "-o", str(out)]) == 0
    assert "EDSR 16x64, x2" in capsys.readouterr().out
    assert _same_outputs(load_model(out), ref)
    assert main(["weights", "import", str(src), "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["weights", "import", str(src), "-o", str(out), "--overwrite", "--fp16"]) == 0
    assert out.stat().st_size < len(body) * 0.6
    assert (
        main(["weights", "import", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.st")]) == 1
    )
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert main(["weights", "import", "no-such-name", "-o", str(tmp_path / "m.st")]) == 1
    assert "neither a file nor a known weights name" in capsys.readouterr().err


def test_load_model_still_takes_files_and_names_unknown_ones(tmp_path, checkpoint):
    body, ref = checkpoint
    src = tmp_path / "edsr-x2"  # a file wins over the registry name it happens to spell
    src.write_bytes(body)
    assert _same_outputs(load_model(str(src), device="cpu"), ref)
    with pytest.raises(EdsrError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(EdsrError, match="neither a file nor a known weights name"):
        load_model("no-such-model", device="cpu")
