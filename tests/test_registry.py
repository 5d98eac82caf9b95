import dataclasses
import importlib.util
import json
import re
import shutil

import pytest
import torch

from conftest import DATA, REPO
from edsr import EdsrError, count_parameters
from edsr.cli import main
from edsr.models import PRESETS, Preset, model_from_config
from edsr.weights import (
    REGISTRY,
    Metric,
    Training,
    WeightsEntry,
    describe,
    find_entry,
    format_table,
    get_entry,
    metrics_from_eval_json,
    paper_res_scale,
    readme_table,
    register,
    unregister,
)
from edsr.weights.entry import PROTOCOL_BENCHMARK, PROTOCOL_DIV2K
from edsr.weights.registry import DEFAULT

OFFICIAL = json.loads((DATA / "official_state_dict_keys.json").read_text())

# EDSR_SPEC.md section 1: trainable parameters, MeanShift constants excluded.
SPEC_PARAMETERS = {
    "edsr-baseline-x2": 1_369_859,
    "edsr-baseline-x3": 1_554_499,
    "edsr-baseline-x4": 1_517_571,
    "edsr-x2": 40_729_603,
    "edsr-x3": 43_680_003,
    "edsr-x4": 43_089_923,
    "mdsr-baseline": 3_227_203,
    "mdsr": 7_953_987,
}
# The key under which official_state_dict_keys.json lists each file.
SPEC_KEY = {
    "edsr-baseline-x2": "EDSR_baseline_x2",
    "edsr-baseline-x3": "EDSR_baseline_x3",
    "edsr-baseline-x4": "EDSR_baseline_x4",
    "edsr-x2": "EDSR_x2",
    "edsr-x3": "EDSR_x3",
    "edsr-x4": "EDSR_x4",
    "mdsr-baseline": "MDSR_baseline",
    "mdsr": "MDSR",
}
# EDSR_SPEC.md section 3: published DIV2K-validation PSNR of the public checkpoints.
SPEC_DIV2K = {
    "edsr-baseline": (34.61, 30.92, 28.95),
    "edsr": (35.03, 31.26, 29.25),
    "mdsr-baseline": (34.63, 30.94, 28.97),
    "mdsr": (34.92, 31.22, 29.24),
}


def _build(entry):
    # The meta device allocates nothing, so the 43M-parameter models cost microseconds.
    with torch.device("meta"):
        return model_from_config(entry.config())


def test_registry_names_the_eight_official_files():
    assert list(SPEC_PARAMETERS) == [n for n, e in REGISTRY.items() if e.source == "official"]


@pytest.mark.parametrize("name", list(SPEC_PARAMETERS))
def test_entry_builds_a_model_with_the_stated_parameter_count(name):
    entry = REGISTRY[name]
    model = _build(entry)
    assert count_parameters(model) == entry.parameters == SPEC_PARAMETERS[name]
    assert entry.parameters == OFFICIAL[SPEC_KEY[name]]["n_params_trainable"]
    assert model.config() == entry.config()


@pytest.mark.parametrize("name", list(SPEC_PARAMETERS))
def test_entry_config_matches_the_official_file_keys_and_shapes(name):
    entry = REGISTRY[name]
    shapes = {k: tuple(v.shape) for k, v in _build(entry).state_dict().items()}
    official = {k: tuple(s) for k, s in OFFICIAL[SPEC_KEY[name]]["state_dict"]}
    assert shapes == official


@pytest.mark.parametrize("name", list(SPEC_PARAMETERS))
def test_official_entry_addresses_hash_and_metrics(name):
    e = REGISTRY[name]
    info = OFFICIAL[SPEC_KEY[name]]
    assert e.urls[0] == info["official_url"]
    assert e.urls[0] == f"https://cv.snu.ac.kr/research/EDSR/models/{e.filename}"
    # torch.hub convention: the suffix is the leading hex of the file's SHA-256.
    assert e.filename.rsplit("-", 1)[1] == f"{e.sha256}.pt" and len(e.sha256) == 8
    assert e.res_scale == (0.1 if e.n_feats == 256 else 1.0)
    family = name.rsplit("-x", 1)[0] if e.arch == "edsr" else name
    for s in e.scales:
        m = e.metric("DIV2K-val", s)
        assert m is not None and m.kind == "published" and m.protocol == PROTOCOL_DIV2K
        assert m.psnr == SPEC_DIV2K[family][s - 2]
    assert e.license and e.source == "official"


def test_torchsr_mirror_only_for_the_edsr_files():
    for e in REGISTRY.values():
        mirrors = [u for u in e.urls[1:] if "Coloquinte/torchSR/releases/download/v1.0.3/" in u]
        if e.arch == "edsr" and e.source == "official":
            stem = "edsr64" if e.n_feats == 64 else "edsr"
            release = "https://github.com/Coloquinte/torchSR/releases/download/v1.0.3/"
            assert mirrors == [f"{release}{stem}_x{e.scale}.pt"]
        else:
            assert mirrors == []


def test_published_set5_numbers_from_the_paper():
    assert [REGISTRY[f"edsr-x{s}"].metric("Set5", s).psnr for s in (2, 3, 4)] == [
        38.11,
        34.65,
        32.46,
    ]
    assert [REGISTRY["mdsr"].metric("Set5", s).psnr for s in (2, 3, 4)] == [38.11, 34.66, 32.50]
    assert REGISTRY["mdsr"].metric("Set5", 2).protocol == PROTOCOL_BENCHMARK
    assert REGISTRY["edsr-baseline-x2"].metric("Set5", 2) is None  # the spec gives none


def test_entries_take_their_sizes_from_the_presets():
    """Model sizes live in edsr.models.PRESETS only: entries name a preset, detection asks it."""
    for e in REGISTRY.values():
        p = PRESETS[e.model_preset.name]
        assert (e.arch, e.n_resblocks, e.n_feats, e.res_scale) == (
            p.arch,
            p.n_resblocks,
            p.n_feats,
            p.res_scale,
        )
        shown = json.loads(json.dumps(dataclasses.asdict(e)))  # what `weights list --json` says
        assert (shown["preset"], shown["arch"], shown["n_feats"]) == (p.name, p.arch, p.n_feats)
    for p in PRESETS.values():
        assert paper_res_scale(p.n_resblocks, p.n_feats) == (
            p.res_scale if p.arch == "edsr" else 1.0
        )
    assert paper_res_scale(7, 24) == 1.0  # no preset of that size: no residual scaling
    # A size no preset has comes as a Preset of its own; res_scale only where it differs.
    tiny = Preset("tiny", "edsr", 2, 8, 1.0, "2 blocks x 8 features")
    e = dataclasses.replace(
        REGISTRY["edsr-baseline-x2"], name="tiny-x2", preset=tiny, res_scale=0.5
    )
    assert (e.n_resblocks, e.n_feats, e.res_scale) == (2, 8, 0.5) and e.config()["n_feats"] == 8
    with torch.device("meta"):
        assert model_from_config(e.config()).n_resblocks == 2


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["edsr-x2"].res_scale = 1.0


@pytest.mark.parametrize(
    "spelling,name",
    [
        ("edsr-x2", "edsr-x2"),
        ("EDSR_X2", "edsr-x2"),
        ("edsr_x2", "edsr-x2"),
        ("edsr_x2-0edfb8a3.pt", "edsr-x2"),
        ("edsr_baseline_x4", "edsr-baseline-x4"),
        ("mdsr_baseline-a00cab12.pt", "mdsr-baseline"),
    ],
)
def test_find_entry_accepts_official_spellings(spelling, name):
    assert find_entry(spelling).name == name


def test_unknown_name_suggests_close_ones():
    with pytest.raises(EdsrError, match="did you mean edsr-x2"):
        get_entry("edsr-x22")
    assert find_entry("nothing-like-it") is None


def test_entry_validation_catches_typos():
    base = REGISTRY["edsr-baseline-x2"]
    for bad in (
        {"sha256": "1bc9523"},  # too short to be worth checking
        {"sha256": "1BC95232"},  # must be lowercase hex
        {"preset": "rcan"},
        {"scales": (2, 3)},
        {"source": "somewhere"},
        {"urls": ()},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(base, **bad)
    with pytest.raises(ValueError, match="res_scale"):
        dataclasses.replace(REGISTRY["mdsr"], res_scale=0.1)


def test_register_and_unregister():
    e = dataclasses.replace(REGISTRY["edsr-baseline-x2"], name="my-test-entry", aliases=())
    register(e)
    try:
        assert get_entry("my_test_entry") is e
        with pytest.raises(EdsrError, match="already exists"):
            register(e)
        assert register(e, replace=True) is e
    finally:
        unregister("my-test-entry")
    assert find_entry("my-test-entry") is None


def test_a_trained_here_bundled_entry_fits_the_registry(tmp_path):
    """The shape of the entry issue 6 part 3 will add: file in assets/, metrics from eval JSON."""
    from edsr.evaluate import evaluate

    one = tmp_path / "Set5-bird"
    one.mkdir()
    shutil.copy(DATA / "Set5" / "HR" / "bird.png", one / "bird.png")
    report = evaluate("bicubic", [one], [2], progress=False)  # a real `edsr eval --json` report
    (tmp_path / "eval.json").write_text(json.dumps(report))
    metrics = metrics_from_eval_json(tmp_path / "eval.json")
    assert [(m.dataset, m.scale, m.kind, m.protocol) for m in metrics] == [
        ("Set5-bird", 2, "measured", "Y (BT.601), shave 2")
    ]
    assert metrics[0].psnr == round(report["results"][0]["psnr"], 4) and metrics[0].ssim < 1
    training = Training(
        command="edsr train --preset mdsr-baseline --train T91 BSD200 ...",
        iterations=1000,
        wall_time_s=3600.0,
        hardware="2-core CPU",
    )
    e = WeightsEntry(
        name="mdsr-baseline-291",
        preset="mdsr-baseline",
        scales=(2, 3, 4),
        filename="mdsr_baseline_291.safetensors",
        sha256="0" * 64,
        parameters=3_227_203,
        license="MIT",
        source="trained here",
        bundled="mdsr_baseline_291.safetensors",
        training=training,
        metrics=metrics,
    )
    assert e.full_hash and not e.urls
    assert "trained here (1,000 it)" in readme_table([e])
    text = describe(e)
    assert "edsr train --preset mdsr-baseline" in text and "bundled" in text
    with pytest.raises(ValueError, match="Training"):
        dataclasses.replace(e, training=None)


def test_format_table_lists_every_entry():
    text = format_table(local={"edsr-x2": "cached"})
    for name in REGISTRY:
        assert name in text
    row = next(line for line in text.splitlines() if line.startswith("edsr-x2 "))
    assert "0.1" in row and "40.73M" in row and "35.03" in row and row.endswith("cached")


def test_describe_lists_addresses_and_metrics():
    text = describe(REGISTRY["edsr-x4"])
    for url in REGISTRY["edsr-x4"].urls:
        assert url in text
    assert 'res_scale": 0.1' in text and "29.25 dB" in text
    assert "sha256:      4f62e9ef (checked: the first 8 hex digits (32 bits) of the SHA-256" in text


def test_cli_weights_list_and_info(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REGISTRY)
    # sizes: bytes where the registry has them, else the words (never "?"); what is checked
    rows = {r.split()[0]: re.split(r"\s{2,}", r) for r in out.splitlines()[1:-2]}
    assert rows["edsr-x2"][6] == "size unknown" and "?" not in out
    assert rows[DEFAULT][6] == f"{REGISTRY[DEFAULT].size / 2**20:.1f} MiB"
    assert out.splitlines()[-1] == (
        "Files are checked against the first 8 hex digits (32 bits) of the SHA-256, all that is "
        "published (official); the full SHA-256 (trained here)"
    )
    assert main(["weights", "info", DEFAULT]) == 0
    assert "(present; matches the full SHA-256)" in capsys.readouterr().out
    assert main(["weights", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == list(REGISTRY)
    assert main(["weights", "info", "edsr_x2"]) == 0
    assert "cv.snu.ac.kr" in capsys.readouterr().out
    assert main(["weights", "info", "nope"]) == 1
    assert "unknown weights 'nope'" in capsys.readouterr().err


def _readme_script():
    spec = importlib.util.spec_from_file_location("models_doc", REPO / "scripts" / "models_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_models_doc_is_in_sync_with_the_registry():
    mod = _readme_script()
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    inside = text.split(mod.START, 1)[1].split(mod.END, 1)[0]
    assert inside.strip() == readme_table().strip(), "run: python scripts/models_doc.py"
    assert mod.render(text) == text


def test_readme_script_rewrites_only_between_markers(tmp_path):
    mod = _readme_script()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- models:start -->\nold\n<!-- models:end -->\nrest\n")
    assert mod.main(["--check", "--doc", str(readme)]) == 1
    assert mod.main(["--doc", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- models:start -->\n| `--model`") and text.endswith(
        "-->\nrest\n"
    )
    assert mod.main(["--check", "--doc", str(readme)]) == 0


def test_metric_defaults_are_published_benchmark():
    m = Metric("Set14", 3, 30.0)
    assert (m.kind, m.protocol, m.self_ensemble) == ("published", PROTOCOL_BENCHMARK, False)


# Bicubic on Set5 (Y, shave = scale) as `edsr eval --model bicubic` measures it (test_resize
# checks it against the published 33.66 / 30.39 / 28.42). The bundled model must clear it by 1.5 dB.
BICUBIC_SET5 = {2: 33.68, 3: 30.40, 4: 28.43}


def test_the_bundled_default_ships_verified_and_beats_bicubic():
    from edsr.io.cache import sha256_file
    from edsr.models import count_parameters
    from edsr.weights import default_model, load_weights, weights_path

    e = get_entry(default_model())
    path = weights_path(e)
    assert e.source == "trained here" and e.bundled and not e.urls and e.full_hash
    assert path.stat().st_size == e.size and sha256_file(path) == e.sha256
    assert count_parameters(load_weights(e, device="cpu")) == e.parameters
    assert e.training is not None and e.training.command == "edsr train --recipe mdsr-baseline-291"
    for d in ("Set5", "Set14", "B100"):
        for s in (2, 3, 4):
            plain, plus = e.metric(d, s), e.metric(d, s, self_ensemble=True)
            assert (
                plain is not None
                and plain.kind == "measured"
                and plain.protocol == f"Y (BT.601), shave {s}"
            )
            assert plus is not None and plus.psnr > plain.psnr
    for s, bicubic in BICUBIC_SET5.items():
        assert e.metric("Set5", s).psnr > bicubic + 1.5
    # Urban100 is measured plain (its self-ensemble, 8 passes, is not yet).
    assert all(e.metric("Urban100", s) is not None for s in (2, 3, 4))


# SRCNN's Set5 row (Y, shave = scale; Dong et al. 2016, as the EDSR and VDSR papers quote it):
# the gate the bundled model must clear at every scale, without self-ensemble.
SRCNN_SET5 = {2: 36.66, 3: 32.75, 4: 30.48}


def test_the_bundled_default_beats_srcnn_on_set5_at_every_scale():
    from edsr.weights import default_model

    e = get_entry(default_model())
    for s, srcnn in SRCNN_SET5.items():
        m = e.metric("Set5", s)
        assert m is not None and not m.self_ensemble and m.psnr > srcnn, (s, m)


def test_the_bundled_numbers_are_what_eval_measures():
    """The registry's Set5 row is re-measured here from the shipped file: nothing typed by hand."""
    from edsr.evaluate import evaluate
    from edsr.weights import default_model, load_weights

    e = get_entry(default_model())
    report = evaluate(load_weights(e, device="cpu"), [DATA / "Set5"], [2, 3, 4], progress=False)
    for r in report["results"]:
        m = e.metric("Set5", r["scale"])
        assert r["psnr"] == pytest.approx(m.psnr, abs=1e-4) and r["ssim"] == pytest.approx(
            m.ssim, abs=1e-4
        )
