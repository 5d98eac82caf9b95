"""edsr eval's library side: a folder with an unreadable image is scored on the rest."""

import pytest

from conftest import DATA, crop_set
from edsr.evaluate import evaluate, format_table


def test_an_unreadable_image_is_reported_skipped_and_counted(tmp_path, capsys):
    good = crop_set(tmp_path / "good", ("bird", "head"), (40, 40, 88, 88))
    mixed = crop_set(tmp_path / "mixed", ("bird", "head"), (40, 40, 88, 88))
    (mixed / "HR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    want = evaluate("bicubic", [good], [2, 3], progress=False)
    got = evaluate("bicubic", [mixed], [2, 3], progress=False)
    err = capsys.readouterr().err
    # One line per bad file, however many scales are measured.
    assert err.count("broken.png") == 1 and err.count("\n") == 1, err
    assert [s["image"] for s in got["skipped"]] == ["broken.png"]
    for a, b in zip(want["results"], got["results"], strict=True):
        assert b["images"] == 2 and b["skipped"] == 1
        assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-12), "the rest are scored as before"
    table = format_table(got)
    assert table.splitlines()[-1].startswith("skipped 1 unreadable image(s): mixed/broken.png")
    assert "skipped" not in format_table(want)


def test_a_data_set_with_no_readable_image_is_an_error(tmp_path):
    from edsr import EdsrError

    (tmp_path / "HR").mkdir()
    (tmp_path / "HR" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(EdsrError, match="no readable image"):
        evaluate("bicubic", [tmp_path], [2], progress=False)


def test_bicubic_on_set5_reads_every_image(tmp_path):
    report = evaluate("bicubic", [DATA / "Set5"], [4], progress=False)
    assert report["skipped"] == [] and report["results"][0]["images"] == 5
