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


def test_the_report_and_the_table_name_the_model(tmp_path, capsys):
    """Two checkpoints of one architecture give reports told apart by the model's file and
    SHA-256; the table's header names it too; a registry model is named with its hash."""
    import json

    from edsr.cli import main
    from edsr.io.cache import sha256_file
    from edsr.models import EDSR
    from edsr.version import __version__
    from edsr.weights import get_entry, save_model
    from sr_helpers import random_weights

    data = crop_set(tmp_path / "set", ("bird", "head"), (40, 40, 88, 88))
    reports = []
    for seed in (0, 1):
        model = random_weights(EDSR(scale=2, n_resblocks=2, n_feats=16), 0.03, seed=seed)
        path = save_model(model, tmp_path / f"run{seed}.safetensors")
        dst = tmp_path / f"r{seed}.json"
        argv = ["eval", "--model", str(path), "--data", str(data), "--json", str(dst), "--quiet"]
        assert main(argv) == 0
        digest = sha256_file(path)
        header = capsys.readouterr().out.splitlines()[0]
        assert header.endswith(f"protocol  [{path} (sha256 {digest[:8]}), fp32]"), header
        report = json.loads(dst.read_text())
        assert report["model"] == str(path) and report["model_sha256"] == digest
        assert report["architecture"]["arch"] == "edsr" and report["precision"] == "fp32"
        assert report["edsr_version"] == __version__ and report["protocol"]["shave"]
        assert report["results"][0]["degradation"] == "clean"
        reports.append(report)
    assert reports[0]["architecture"] == reports[1]["architecture"]
    assert reports[0]["model_sha256"] != reports[1]["model_sha256"]

    entry = get_entry("mdsr-baseline-291")
    assert main(["eval", "--model", entry.name, "--data", str(data), "--scale", "2",
                 "--json", str(tmp_path / "reg.json"), "--quiet"]) == 0  # fmt: skip
    assert f"[mdsr-baseline-291 (sha256 {entry.sha256[:8]}), fp32]" in capsys.readouterr().out
    report = json.loads((tmp_path / "reg.json").read_text())
    assert (report["model"], report["model_sha256"]) == (entry.name, entry.sha256)


def test_bicubic_and_a_python_model_are_named_as_what_they_are(tmp_path):
    from sr_helpers import small_edsr

    data = crop_set(tmp_path / "set", ("bird",), (40, 40, 88, 88))
    bicubic = evaluate("bicubic", [data], [2], progress=False)
    assert (bicubic["model"], bicubic["model_sha256"], bicubic["architecture"]) == (
        "bicubic",
        None,
        None,
    )
    assert format_table(bicubic).splitlines()[0].endswith("protocol  [bicubic]")
    built = evaluate(small_edsr(2), [data], [2], progress=False)
    assert built["model"] is None and built["architecture"]["arch"] == "edsr"
    assert format_table(built).splitlines()[0].endswith("[a model built in Python, fp32]")


def test_an_existing_saved_image_is_refused_before_any_image_is_scored(tmp_path):
    from edsr import EdsrError
    from sr_helpers import small_edsr

    data = crop_set(tmp_path / "set", ("baby", "bird"), (40, 40, 88, 88))
    save = tmp_path / "save"
    (save / "set" / "x2").mkdir(parents=True)
    (save / "set" / "x2" / "bird_x2.png").write_bytes(b"an earlier result")
    with pytest.raises(EdsrError, match=r"bird_x2.png already exists; pass --overwrite"):
        evaluate(small_edsr(2), [data], [2], save_images=save, progress=False)
    assert sorted(p.name for p in (save / "set" / "x2").iterdir()) == ["bird_x2.png"]
