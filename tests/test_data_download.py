"""`edsr data`: download, resume, verify and extract, end to end against 127.0.0.1.

A small archive in the benchmark layout is made in the test and served by an http.server in a
thread that honours Range requests and can truncate, answer 404, or ignore Range; the data set
entry describing it is passed in (or put in the catalogue dict with monkeypatch), never shipped.
No test contacts a real address.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edsr.cli import main
from edsr.datasets import DATASETS, Archive, DataSetEntry, download_dataset, status
from edsr.datasets.fetch import data_root
from edsr.errors import EdsrError
from edsr.evaluate import discover
from edsr.io.download import Checksum, part_path
from edsr.io.image import read_image, write_png
from local_server import refused_url

SET = "TestSet"


@pytest.fixture
def server(local_server):
    return local_server


@pytest.fixture
def home(edsr_home):
    return edsr_home / "data"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[bytes, dict[str, np.ndarray]]:
    """A tar in the EDSR authors' benchmark.tar layout: two HR images, their x2 LR images,
    and a member of another set that must not be extracted. Big enough to cut in the middle."""
    rng = np.random.default_rng(0)
    src = tmp_path_factory.mktemp("src")
    images = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for stem in ("a", "b"):
            hr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
            lr = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
            images[stem] = hr
            for arr, name in ((hr, f"HR/{stem}.png"), (lr, f"LR_bicubic/X2/{stem}x2.png")):
                path = write_png(src / name.replace("/", "_"), arr)
                tf.add(path, arcname=f"benchmark/{SET}/{name}")
        tf.add(path, arcname="benchmark/Other/HR/c.png")
    return buf.getvalue(), images


def _entry(urls, body: bytes, *, checksum: Checksum | None | str = "md5", size=None):
    if checksum == "md5":
        checksum = Checksum("md5", hashlib.md5(body).hexdigest())
    a = Archive(
        filename="bench.tar",
        urls=tuple(urls),
        size=size,
        checksum=checksum,  # type: ignore[arg-type]
        source="test",
        members=((f"benchmark/{SET}/", f"{SET}/"),),
    )
    return DataSetEntry(SET, "test set", SET, (a,))


def _check_extracted(folder: Path, images: dict[str, np.ndarray]) -> None:
    ds = discover(folder)  # what `edsr eval --data` reads
    assert ds.kind == "benchmark" and [p.name for p in ds.hr_files] == ["a.png", "b.png"]
    for p in ds.hr_files:
        assert np.array_equal(read_image(p).pixels, images[p.stem])
        assert ds.lr_path(p, 2) is not None
    assert not (folder.parent / "Other").exists()


def test_good_file_is_verified_extracted_and_listed(server, home, archive, monkeypatch, capsys):
    body, images = archive
    server.routes["/bench.tar"] = ("ok", body)
    e = _entry([server.url("/bench.tar")], body)
    monkeypatch.setitem(DATASETS, SET, e)
    assert status(SET).state == "absent"
    assert main(["data", "download", SET.lower(), "--quiet"]) == 0
    folder = home / SET
    assert capsys.readouterr().out.strip() == f"{SET}: {folder}"
    _check_extracted(folder, images)
    assert not (home / "downloads" / "bench.tar").exists()  # removed once extracted
    assert status(SET).state == "present"
    assert main(["data", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(SET))
    assert row.split()[1:5] == ["bench.tar", "unpublished", "MD5", "present"]
    # Present: a second download asks the server for nothing.
    assert download_dataset(SET, progress=False) == folder and len(server.requests) == 1


def test_wrong_checksum_is_one_line_naming_file_address_and_place(server, home, archive):
    body, _ = archive
    server.routes["/bench.tar"] = ("ok", body)
    e = _entry([server.url("/bench.tar")], body, checksum=Checksum("md5", "0" * 32))
    with pytest.raises(EdsrError) as info:
        download_dataset(e, progress=False)
    msg = str(info.value)
    dest = home / "downloads" / "bench.tar"
    assert "\n" not in msg and "MD5 mismatch" in msg and server.url("/bench.tar") in msg
    assert f"place it at {dest}" in msg and "bench.tar" in msg
    assert not dest.exists() and not part_path(dest).exists()  # a wrong file is not kept
    assert not (home / SET).exists()


def test_truncated_then_resumed_with_range(server, home, archive, capsys):
    body, images = archive
    cut = len(body) // 3
    server.routes["/bench.tar"] = ("cut", body, cut)
    e = _entry([server.url("/bench.tar")], body)
    folder = download_dataset(e, progress=True)
    assert server.requests == [("/bench.tar", None), ("/bench.tar", f"bytes={cut}-")]
    _check_extracted(folder, images)
    err = capsys.readouterr().err
    assert f"truncated: got {cut:,} of {len(body):,} bytes" in err
    assert f"bench.tar: resuming at byte {cut:,}" in err


def test_part_file_of_an_earlier_run_is_continued_or_restarted(server, home, archive):
    body, images = archive
    dest = home / "downloads" / "bench.tar"
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(body[:1000])  # what an interrupted earlier run left
    server.routes["/bench.tar"] = ("ok", body)
    download_dataset(_entry([server.url("/bench.tar")], body), progress=False)
    assert server.requests == [("/bench.tar", "bytes=1000-")]
    # A server that ignores Range sends the whole file again: it starts over cleanly.
    part_path(dest).write_bytes(body[:1000])
    (home / SET / ".edsr-bench.tar.json").unlink()
    server.routes["/plain.tar"] = ("norange", body)
    folder = download_dataset(_entry([server.url("/plain.tar")], body), progress=False)
    assert server.requests[-1] == ("/plain.tar", "bytes=1000-")
    _check_extracted(folder, images)


def test_404_then_mirror(server, home, archive):
    body, images = archive
    server.routes["/mirror/bench.tar"] = ("ok", body)
    e = _entry([server.url("/gone.tar"), server.url("/mirror/bench.tar")], body)
    folder = download_dataset(e, progress=False)
    assert [p for p, _ in server.requests] == ["/gone.tar", "/mirror/bench.tar"]
    _check_extracted(folder, images)


def test_offline_says_where_to_put_a_copy_and_uses_it(home, archive, monkeypatch, capsys):
    body, images = archive
    url = refused_url("/bench.tar")
    e = _entry([url], body)
    monkeypatch.setitem(DATASETS, SET, e)
    monkeypatch.setenv("EDSR_OFFLINE", "1")
    assert main(["data", "download", SET, "--quiet"]) == 1
    err = capsys.readouterr().err
    dest = data_root() / "downloads" / "bench.tar"
    assert err.count("\n") == 1 and "EDSR_OFFLINE" in err and url in err
    assert f"place it at {dest}" in err
    dest.parent.mkdir(parents=True)
    dest.write_bytes(body)  # what the message says to do
    assert main(["data", "download", SET, "--quiet"]) == 0
    _check_extracted(home / SET, images)


def test_server_down_names_every_address(home, archive):
    body, _ = archive
    urls = [refused_url("/a.tar"), refused_url("/b.tar")]
    with pytest.raises(EdsrError) as info:
        download_dataset(_entry(urls, body), progress=False)
    assert all(f"{u} (connection refused)" in str(info.value) for u in urls)


def _zip_with(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, b"x")
    return buf.getvalue()


@pytest.mark.parametrize(
    "member", [f"benchmark/{SET}/../../escape.png", f"benchmark/{SET}/HR/../../../up.png"]
)
def test_members_escaping_the_root_are_refused(server, home, member):
    body = _zip_with(member)
    server.routes["/bad.zip"] = ("ok", body)
    with pytest.raises(EdsrError, match="points outside"):
        download_dataset(_entry([server.url("/bad.zip")], body), progress=False)
    assert not list(home.parent.rglob("*escape*")) and not list(home.parent.rglob("up.png"))


def test_links_in_archives_are_refused(server, home):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo(f"benchmark/{SET}/HR/a.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    body = buf.getvalue()
    server.routes["/link.tar"] = ("ok", body)
    with pytest.raises(EdsrError, match="links and special files"):
        download_dataset(_entry([server.url("/link.tar")], body), progress=False)
    assert not (home / SET / "HR" / "a.png").exists()


def test_unknown_name_and_manual_set(home):
    with pytest.raises(EdsrError, match="unknown data set 'nope'; known: DIV2K"):
        download_dataset("nope")
    with pytest.raises(EdsrError, match=r"manga109\.org.*edsr downscale"):
        download_dataset("Manga109")
    assert status("Manga109").state == "by hand"


def test_catalogue_is_complete():
    """Every set the issue names, each downloadable file with an http(s) address and a
    published checksum or an explicit None; DIV2K with SHA-256 and exact sizes."""
    assert {"DIV2K", "Flickr2K", "Set5", "Set14", "B100", "Urban100", "Manga109"} <= set(DATASETS)
    div2k = DATASETS["DIV2K"].archives
    assert len(div2k) == 8 and all(a.checksum and a.checksum.algorithm == "sha256" for a in div2k)
    assert all(a.size and len(a.checksum.hexdigest) == 64 for a in div2k if a.checksum)
    for e in DATASETS.values():
        for a in e.archives:
            assert a.urls and all(u.startswith("https://") for u in a.urls)
            assert a.members and a.source
