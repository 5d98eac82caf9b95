"""`edsr data`: download, resume, verify and extract, end to end against 127.0.0.1.

A small archive in the benchmark layout, or a few real images published one by one, is made in
the test and served by an http.server in a thread that honours Range requests and can
truncate, stall, answer 404, or ignore Range; the data set entry describing it is passed in
(or put in the catalogue dict with monkeypatch), never shipped. No test contacts a real
address.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, need_shared
from edsr.cli import main
from edsr.datasets import DATASETS, Archive, DataSetEntry, download_dataset, find_data, status
from edsr.datasets.catalogue import ImageFile, ImageFiles
from edsr.datasets.fetch import data_root
from edsr.datasets.images import pixel_digest
from edsr.errors import EdsrError
from edsr.evaluate import discover
from edsr.io.download import Checksum, FetchFailed, download, fetch_url, part_path
from edsr.io.image import read_image, write_png
from edsr.training.data import find_sources
from local_server import refused_url

SET = "TestSet"
SET5 = DATA / "Set5" / "HR"


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
    assert re.split(r"\s{2,}", row)[1:5] == ["bench.tar", "size unknown", "MD5", "present"]
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
    names = {"DIV2K", "Flickr2K", "Set5", "Set14", "B100", "Urban100", "Manga109", "T91", "BSD200"}
    assert names <= set(DATASETS)
    div2k = DATASETS["DIV2K"].archives
    assert len(div2k) == 8 and all(a.checksum and a.checksum.algorithm == "sha256" for a in div2k)
    assert all(a.size and len(a.checksum.hexdigest) == 64 for a in div2k if a.checksum)
    for e in DATASETS.values():
        for a in e.archives:
            assert a.urls and all(u.startswith("https://") for u in a.urls)
            assert a.members and a.source


# --------------------------------------------------------------------------------------------
# Sets published image by image (T91, BSD200): fetched file by file, checked by decoded pixels
# --------------------------------------------------------------------------------------------

IMG = "TestImages"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[bytes, np.ndarray]]:
    """Real images as a repository would publish them: two Set5 images as BMP (the biggest,
    786 kB, cut in the middle), one as PNG; name -> (file bytes, pixels)."""
    out = {}
    for stem, fmt in (("baby", "BMP"), ("bird", "BMP"), ("head", "PNG")):
        pixels = np.asarray(Image.open(SET5 / f"{stem}.png").convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        out[f"{stem}.{fmt.lower()}"] = (buf.getvalue(), pixels)
    return out


def _digest(pixels: np.ndarray) -> str:
    """The pixel hash as the catalogue documents it, computed here without the product."""
    h, w, c = pixels.shape
    return hashlib.sha256(f"{w}x{h}x{c} uint8\n".encode() + pixels.tobytes()).hexdigest()


def _image_entry(base_url: str, sources) -> DataSetEntry:
    files = tuple(
        ImageFile(Path(f).stem, f"data/{f}", px.shape[1], px.shape[0], _digest(px))
        for f, (_, px) in sources.items()
    )
    images = ImageFiles((base_url,), "test repository", files)
    return DataSetEntry(IMG, "test images", IMG, (), images=images)


def _serve(server, sources, base: str = "/repo/abc123/") -> None:
    for f, (body, _) in sources.items():
        server.routes[f"{base}data/{f}"] = ("ok", body)


def _check_images(folder: Path, sources) -> None:
    """What `edsr train --train FOLDER` reads: every image, as PNG, with the source's pixels."""
    found = find_sources([folder], [2, 3, 4])
    assert [s.hr.name for s in found] == sorted(f"{Path(f).stem}.png" for f in sources)
    for s in found:
        src = next(px for f, (_, px) in sources.items() if Path(f).stem == s.hr.stem)
        assert np.array_equal(read_image(s.hr).pixels, src) and s.lr == {}


def test_pixel_digest_is_the_documented_hash(sources):
    # Decoded pixels, not bytes: the BMP and a PNG of the same pixels agree.
    body, px = sources["baby.bmp"]
    png = io.BytesIO()
    Image.fromarray(px).save(png, format="PNG")
    assert pixel_digest(read_image(body)) == pixel_digest(read_image(png.getvalue()))
    assert pixel_digest(read_image(body)) == _digest(px)


def test_image_set_resumed_after_a_cut(server, home, sources, monkeypatch, capsys):
    entry = _image_entry(server.url("/repo/abc123/"), sources)
    monkeypatch.setitem(DATASETS, IMG, entry)
    _serve(server, sources)
    body = sources["baby.bmp"][0]
    cut = len(body) // 2
    server.routes["/repo/abc123/data/baby.bmp"] = ("cut", body, cut)
    assert main(["data", "download", IMG, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"{IMG}: {home / IMG}"
    assert server.requests[:2] == [
        ("/repo/abc123/data/baby.bmp", None),
        ("/repo/abc123/data/baby.bmp", f"bytes={cut}-"),
    ]
    assert len(server.requests) == 4  # each file once, the cut one twice
    _check_images(home / IMG, sources)
    assert (home / IMG / f".edsr-{IMG}.json").is_file() and not (home / "downloads" / IMG).exists()
    assert status(IMG).state == "present"


def test_image_set_corrupt_file_refused_then_the_rest_fetched(
    server, home, sources, monkeypatch, capsys
):
    entry = _image_entry(server.url("/repo/abc123/"), sources)
    monkeypatch.setitem(DATASETS, IMG, entry)
    _serve(server, sources)
    body, px = sources["bird.bmp"]
    bad = px.copy()
    bad[7, 3, 1] ^= 1  # one sample off by one: a valid BMP, the wrong pixels
    buf = io.BytesIO()
    Image.fromarray(bad).save(buf, format="BMP")
    server.routes["/repo/abc123/data/bird.bmp"] = ("ok", buf.getvalue())
    assert main(["data", "download", IMG, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not get 1 of 3 images of TestImages: bird:" in err
    assert "pixel hash mismatch" in err and "Run `edsr data download TestImages` again" in err
    hr = home / IMG / "HR"
    assert sorted(p.name for p in hr.iterdir()) == ["baby.png", "head.png"]
    assert not list((home / "downloads").rglob("bird*"))  # a wrong file is not kept
    assert status(IMG).state == "partial"
    # a cut set does not pass for the whole one where a command names it
    with pytest.raises(EdsrError, match="only partly downloaded.*edsr data download TestImages"):
        find_data(IMG)
    assert main(["data", "list"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith(IMG))
    assert "3 images" in row and "pixel SHA-256" in row and "partial (2 of 3 images)" in row
    # Fixed at the source: the next run fetches only what is missing.
    server.routes["/repo/abc123/data/bird.bmp"] = ("ok", body)
    server.requests.clear()
    assert main(["data", "download", IMG, "--quiet"]) == 0
    assert server.paths == ["/repo/abc123/data/bird.bmp"]
    _check_images(home / IMG, sources)
    assert find_data(IMG) == home / IMG


def test_a_whole_image_set_placed_by_hand_is_the_set(home, sources, monkeypatch, tmp_path):
    """The shared copies under a --data-root carry no download record: every image in place
    is the set; one missing is a cut set."""
    monkeypatch.setitem(DATASETS, IMG, _image_entry(refused_url("/repo/"), sources))
    root = tmp_path / "by-hand"
    hr = root / IMG / "HR"
    hr.mkdir(parents=True)
    for f, (_, px) in sources.items():
        Image.fromarray(px).save(hr / f"{Path(f).stem}.png")
    assert status(IMG, root).state == "present" and find_data(IMG, root) == root / IMG
    (hr / "head.png").unlink()
    assert status(IMG, root).state == "partial"
    with pytest.raises(EdsrError, match="only partly downloaded"):
        find_data(IMG, root)


def test_image_set_placed_by_hand_offline(home, sources, monkeypatch):
    entry = _image_entry(refused_url("/repo/"), sources)
    monkeypatch.setenv("EDSR_OFFLINE", "1")
    with pytest.raises(EdsrError, match=r"could not get 3 of 3 .*EDSR_OFFLINE") as info:
        download_dataset(entry, progress=False)
    place = home / "downloads" / IMG
    assert f"place the files by hand in {place}" in str(info.value)
    place.mkdir(parents=True)
    for f, (body, _) in sources.items():
        (place / f).write_bytes(body)
    assert download_dataset(entry, progress=False) == home / IMG
    _check_images(home / IMG, sources)


def test_catalogue_t91_bsd200_pinned_and_listed(home, capsys):
    pinned = (
        "https://raw.githubusercontent.com/jiny2001/dcscn-super-resolution/"
        "d382bc30d41c94ac72f8cb148d61cc4864b3b380/"
    )
    for name, n, pattern in (
        ("T91", 91, "data/yang91/{}.bmp"),
        ("BSD200", 200, "data/bsd200/{}.png"),
    ):
        spec = DATASETS[name].images
        assert spec is not None and spec.base_urls == (pinned,) and len(spec.files) == n
        assert len({f.name for f in spec.files}) == n
        assert all(f.path == pattern.format(f.name) and len(f.pixels) == 64 for f in spec.files)
    assert main(["data", "list"]) == 0
    rows = {r.split()[0]: re.split(r"\s{2,}", r)[1:] for r in capsys.readouterr().out.splitlines()}
    assert rows["T91"][:4] == ["91 images", "size unknown", "pixel SHA-256", "absent"]
    assert rows["BSD200"][:4] == ["200 images", "size unknown", "pixel SHA-256", "absent"]
    # bytes where the catalogue has every archive's size; the words where it has not
    assert rows["DIV2K-valid"][1] == "623 MiB" and rows["DIV2K"][1] == "5.39 GiB"
    assert rows["Set5"][1] == rows["Flickr2K"][1] == "size unknown"
    assert rows["name"][1] == "size"


def _mirror_of_shared(root: Path, shared: Path) -> dict[str, tuple[bytes, np.ndarray]]:
    """What the pinned repository serves, rebuilt from the shared lossless PNG copies: T91 as
    BMP (as published), BSD200 as the PNGs."""
    files = {}
    for p in sorted((shared / "T91" / "HR").glob("*.png")):
        buf = io.BytesIO()
        Image.open(p).save(buf, format="BMP")
        files[f"T91/{p.stem}.bmp"] = buf.getvalue()
    for p in sorted((shared / "BSD200" / "HR").glob("*.png")):
        files[f"BSD200/{p.name}"] = p.read_bytes()
    return files


def test_shipped_pixel_hashes_match_the_shared_copies():
    """The table in the package against the shared PNGs (a sample here; all in the slow test)."""
    shared = need_shared("train")
    for name in ("T91", "BSD200"):
        for f in DATASETS[name].images.files[::25]:
            image = read_image(shared / name / "HR" / f"{f.name}.png")
            assert pixel_digest(image) == f.pixels
            assert image.pixels.shape[:2] == (f.height, f.width)


@pytest.mark.slow
def test_t91_bsd200_from_a_mirror_are_what_edsr_train_reads(server, home, monkeypatch, capsys):
    """The real catalogue entries, every image, through $EDSR_DATA_MIRROR: one file cut and
    resumed, one corrupt and refused, then fetched alone by the next run."""
    shared = need_shared("train")
    for name in ("T91", "BSD200"):  # the published address, should the mirror fail: a local one
        e = DATASETS[name]
        local = dataclasses.replace(e.images, base_urls=(refused_url("/github/"),))
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(e, images=local))
    files = _mirror_of_shared(home, shared)
    for path, body in files.items():
        server.routes[f"/mirror/{path}"] = ("ok", body)
    cut = len(files["T91/t1.bmp"]) // 2
    server.routes["/mirror/T91/t1.bmp"] = ("cut", files["T91/t1.bmp"], cut)
    server.routes["/mirror/BSD200/100075.png"] = ("ok", files["BSD200/100080.png"])
    monkeypatch.setenv("EDSR_DATA_MIRROR", server.url("/mirror"))
    assert main(["data", "download", "T91", "BSD200", "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"T91: {home / 'T91'}"]
    assert server.requests[:2] == [
        ("/mirror/T91/t1.bmp", None),
        ("/mirror/T91/t1.bmp", f"bytes={cut}-"),
    ]
    assert (
        "could not get 1 of 200 images of BSD200: 100075:" in err and "pixel hash mismatch" in err
    )
    assert err.splitlines()[1] == "edsr: error: 1 of 2 data sets not downloaded: BSD200"
    assert err.count("\n") == 2 and status("BSD200").state == "partial"
    server.routes["/mirror/BSD200/100075.png"] = ("ok", files["BSD200/100075.png"])
    server.requests.clear()
    assert main(["data", "download", "T91", "BSD200", "--quiet"]) == 0
    assert server.paths == ["/mirror/BSD200/100075.png"]  # only what was missing
    found = find_sources([find_data("T91"), find_data("BSD200")], [2, 3, 4])
    assert len(found) == 291
    for s in found[::29]:
        want = read_image(shared / s.hr.parent.parent.name / "HR" / s.hr.name).pixels
        assert np.array_equal(read_image(s.hr).pixels, want)
    assert status("T91").state == status("BSD200").state == "present"


# --------------------------------------------------------------------------------------------
# Hardening: every name tried, a mirror, nothing received lost, nothing half extracted
# --------------------------------------------------------------------------------------------


def test_every_name_is_tried_and_each_failure_reported(server, home, archive, monkeypatch, capsys):
    body, images = archive
    server.routes["/bench.tar"] = ("ok", body)
    monkeypatch.setitem(DATASETS, SET, _entry([server.url("/bench.tar")], body))
    broken = DataSetEntry(
        "Broken", "gone", "Broken", _entry([server.url("/gone.tar")], body).archives
    )
    monkeypatch.setitem(DATASETS, "Broken", broken)
    assert main(["data", "download", "T404", "Broken", SET, "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == f"{SET}: {home / SET}"
    lines = err.splitlines()
    assert len(lines) == 3 and "unknown data set 'T404'" in lines[0]
    assert "could not download bench.tar for Broken" in lines[1] and "HTTP 404" in lines[1]
    assert lines[2] == "edsr: error: 2 of 3 data sets not downloaded: T404, Broken"
    _check_extracted(home / SET, images)


def test_mirror_is_tried_first_from_the_flag_or_the_environment(
    server, home, archive, monkeypatch, capsys
):
    body, images = archive
    published = refused_url("/bench.tar")
    monkeypatch.setitem(DATASETS, SET, _entry([published], body))
    server.routes["/env/bench.tar"] = ("ok", body)
    server.routes["/flag/bench.tar"] = ("ok", body)
    monkeypatch.setenv("EDSR_DATA_MIRROR", server.url("/env"))
    assert main(["data", "download", SET, "--quiet"]) == 0
    _check_extracted(home / SET, images)
    (home / SET / ".edsr-bench.tar.json").unlink()
    assert main(["data", "download", SET, "--quiet", "--mirror", server.url("/flag/")]) == 0
    assert server.paths == ["/env/bench.tar", "/flag/bench.tar"]
    capsys.readouterr()
    # A mirror that is not an http(s) address: one line, from the flag or the environment.
    with pytest.raises(SystemExit, match="2"):
        main(["data", "download", SET, "--quiet", "--mirror", "ftp://host/x"])
    monkeypatch.setenv("EDSR_DATA_MIRROR", "/some/folder")
    assert main(["data", "download", SET, "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "argument --mirror: expected an http(s)" in err[0]
    assert "EDSR_DATA_MIRROR must be an http(s) address" in err[1] and "/some/folder" in err[1]


def test_a_stalled_download_keeps_every_byte_received(server, home):
    """Less than the 1 MiB read size arrives, then the server stalls past the timeout: the
    bytes are in the .part file, and the retry asks only for the rest."""
    body = np.random.default_rng(1).integers(0, 256, 400_000, dtype=np.uint8).tobytes()
    n = 300_000
    server.routes["/slow.bin"] = ("pause", body, n, 3.0)
    dest = home / "slow.bin"
    dest.parent.mkdir(parents=True)
    with pytest.raises(FetchFailed, match="timed out"):
        fetch_url(
            server.url("/slow.bin"),
            dest,
            size=None,
            checksum=None,
            label="x",
            timeout=0.5,
            progress=False,
        )
    assert dest.read_bytes() == body[:n]
    server.routes["/slow.bin"] = ("pause", body, n, 3.0)
    got, failures = download(
        [server.url("/slow.bin")],
        dest,
        size=len(body),
        checksum=Checksum("md5", hashlib.md5(body).hexdigest()),
        timeout=0.5,
        progress=False,
    )
    assert failures == [] and got.read_bytes() == body
    assert server.requests[-2:] == [("/slow.bin", None), ("/slow.bin", f"bytes={n}-")]


def _tar(members: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _damaged_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"benchmark/{SET}/HR/a.png", b"a" * 100)
        zf.writestr(f"benchmark/{SET}/HR/b.png", b"b" * 100)
    data = bytearray(buf.getvalue())
    data[data.index(b"b" * 100) + 50] = ord("c")  # b.png's bytes no longer match its CRC
    return bytes(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_tar([(f"benchmark/{SET}/HR/a.png", b"x"), (f"benchmark/{SET}/HR/b.png", None)]), "links"),
        (_damaged_zip(), "is damaged"),
    ],
    ids=["link-after-a-good-member", "bad-crc-after-a-good-member"],
)
def test_a_refused_archive_leaves_no_member_extracted(server, home, body, message):
    server.routes["/bad"] = ("ok", body)
    e = _entry([server.url("/bad")], body)
    with pytest.raises(EdsrError, match=message):
        download_dataset(e, progress=False)
    assert not (home / SET).exists()  # a.png, read before the bad member, is not there
    assert [p.name for p in home.iterdir()] == ["downloads"]  # no staging folder left


def test_root_under_a_file_is_one_line_naming_it(home, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit, match="2"):  # refused at the door, by argparse
        main(["data", "download", "Set5", "--root", str(afile / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(afile) in err and "internal error" not in err
    # The library refuses it too, before any download.
    for root in (afile, afile / "x"):
        with pytest.raises(EdsrError, match="not a folder") as info:
            download_dataset("Set5", root=root, progress=False)
        assert str(afile) in str(info.value) and "\n" not in str(info.value)
    assert afile.read_text() == "x" and not home.exists()


# --------------------------------------------------------------------------------------------
# A host that cannot be reached: tried once a run, said once a set; nothing deleted passes
# --------------------------------------------------------------------------------------------


def _unfetchable_set(name: str, base_url: str, n: int) -> DataSetEntry:
    """A set of ``n`` images published at ``base_url`` (their pixels never get checked)."""
    files = tuple(ImageFile(f"im{i}", f"data/im{i}.png", 8, 8, "0" * 64) for i in range(n))
    return DataSetEntry(name, "test", name, (), images=ImageFiles((base_url,), "test", files))


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(lambda: refused_url("/repo/"), id="closed-port"),
        pytest.param(lambda: "http://edsr-test.invalid/repo/", id="unresolvable"),
    ],
)
def test_a_host_down_is_tried_once_a_run_and_said_once_a_set(home, monkeypatch, capsys, base):
    import time

    import edsr.io.download

    url = base()
    host = url.split("/")[2]
    for name in ("Down1", "Down2"):  # as T91 and BSD200: one host for both
        monkeypatch.setitem(DATASETS, name, _unfetchable_set(name, url, 40))
    tries: list[str] = []
    real = edsr.io.download.fetch_url

    def counted(u, *args, **kwargs):
        tries.append(u)
        return real(u, *args, **kwargs)

    monkeypatch.setattr(edsr.io.download, "fetch_url", counted)
    t0 = time.monotonic()
    assert main(["data", "download", "Down1", "Down2"]) == 1  # progress bars on, as by hand
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert tries == [url + "data/im0.png"]  # 80 files, one host: one try
    assert took < 10, took
    # one cause, one line: the second set fails as the first, so it is named on that line
    assert err.endswith("\n") and err.count("\n") == 1, err
    line = err[:-1].rsplit("\r", 1)[-1]  # past the bars' \r
    assert line.startswith("edsr: error: could not get 40 of 40 images of Down1: ")
    assert f"cannot reach {host} (" in line and "http://" not in line  # the host, no URL
    assert "--mirror URL" in line and f"{home / 'downloads' / 'Down1'}" in line
    assert line.endswith("(the same for Down2)")
    assert "verified ones" not in line and "/HR" not in line  # nothing kept, none claimed
    assert not (home / "Down1").exists() and not (home / "Down2").exists()


def test_archives_on_a_host_down_are_tried_once_a_run(home, archive, monkeypatch, capsys):
    import edsr.io.download

    body, _ = archive
    url = refused_url("/bench.tar")
    a = _entry([url], body).archives
    for name in ("ArcA", "ArcB"):
        monkeypatch.setitem(DATASETS, name, DataSetEntry(name, "test", name, a))
    tries: list[str] = []
    real = edsr.io.download.fetch_url
    monkeypatch.setattr(
        edsr.io.download, "fetch_url", lambda u, *a, **k: tries.append(u) or real(u, *a, **k)
    )
    assert main(["data", "download", "ArcA", "ArcB", "--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert tries == [url] and len(lines) == 3
    assert "could not download bench.tar for ArcA" in lines[0] and "connection refused" in lines[0]
    assert "not tried: 127.0.0.1:" in lines[1] and "could not be reached" in lines[1]


def _row(capsys, name: str) -> str:
    capsys.readouterr()
    assert main(["data", "list"]) == 0
    return next(r for r in capsys.readouterr().out.splitlines() if r.startswith(name))


def test_an_image_deleted_after_a_download_is_missing_and_fetched_again(
    server, home, sources, monkeypatch, capsys
):
    monkeypatch.setitem(DATASETS, IMG, _image_entry(server.url("/repo/abc123/"), sources))
    _serve(server, sources)
    assert main(["data", "download", IMG, "--quiet"]) == 0
    assert "present" in _row(capsys, IMG)
    (home / IMG / "HR" / "bird.png").unlink()
    assert "partial (2 of 3 images)" in _row(capsys, IMG)
    with pytest.raises(EdsrError, match="only partly downloaded"):
        find_data(IMG)
    server.requests.clear()
    assert main(["data", "download", IMG, "--quiet"]) == 0
    assert server.paths == ["/repo/abc123/data/bird.bmp"]  # only the missing one
    _check_images(home / IMG, sources)
    assert "present" in _row(capsys, IMG)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_an_extracted_file_deleted_or_cut_is_missing_and_fetched_again(
    server, home, archive, monkeypatch, capsys, damage
):
    body, images = archive
    server.routes["/bench.tar"] = ("ok", body)
    monkeypatch.setitem(DATASETS, SET, _entry([server.url("/bench.tar")], body))
    assert main(["data", "download", SET, "--quiet"]) == 0
    lr = home / SET / "LR_bicubic" / "X2" / "bx2.png"
    if damage == "delete":
        lr.unlink()
    else:
        lr.write_bytes(lr.read_bytes()[:100])
    assert status(SET).state == "absent" and "absent" in _row(capsys, SET)
    server.requests.clear()
    assert main(["data", "download", SET, "--quiet"]) == 0
    assert server.paths == ["/bench.tar"]
    _check_extracted(home / SET, images)
    assert status(SET).state == "present"
