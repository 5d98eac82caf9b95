"""`edsr serve` in a real browser: Debian's headless Chromium driven by Selenium through the
system chromedriver (nothing is downloaded). Picks and drops images, upscales, checks the
before/after viewer and that the download is the upscaled image, and that a server error is
shown to the user.

The browser resolves no host name (only the server's 127.0.0.1 is reachable), as on a machine
without internet: the page and the API documentation at /docs must load all they need from the
server itself.

Set EDSR_SERVE_SCREENSHOT=/path.png to keep a screenshot of the page after the upscale.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs the 'serve' extra (fastapi)")
pytest.importorskip("uvicorn", reason="needs the 'serve' extra (uvicorn)")
pytest.importorskip("python_multipart", reason="needs the 'serve' extra (python-multipart)")
pytest.importorskip("selenium", reason="needs selenium (pip install selenium)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "needs Debian's Chromium and ChromeDriver: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from edsr import save_model, upscale  # noqa: E402
from edsr.models import EDSR, MDSR  # noqa: E402
from edsr.serve import ServeConfig, background_server, create_app, load_models  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser_models")
    torch.manual_seed(0)
    save_model(EDSR(scale=2, n_resblocks=2, n_feats=16), d / "tiny-x2.safetensors")
    save_model(MDSR(scales=(2, 3), n_resblocks=2, n_feats=16), d / "tiny-mdsr.safetensors")
    models = load_models(
        [str(d / "tiny-x2.safetensors"), str(d / "tiny-mdsr.safetensors")],
        device="cpu",
        progress=False,
    )
    app = create_app(models, ServeConfig(max_pixels=50_000, tmp_dir=str(d)))
    with background_server(app) as url:
        yield url, models


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,1100",
        # no name resolves: a CDN cannot be reached, the server on 127.0.0.1 can
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    except Exception as e:  # noqa: BLE001 - a browser that cannot start is an environment issue
        pytest.skip(f"headless Chromium did not start: {str(e).splitlines()[0]}")
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def write_png(path: Path, a: np.ndarray) -> Path:
    Image.fromarray(a).save(path)
    return path


def photo(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 / w, y * 255 / h, 128 + 100 * np.sin((x + y) / 3)], axis=2)
    return np.clip(a, 0, 255).astype(np.uint8)


def wait(driver, predicate, timeout: float = 30):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d))


def visible(driver, element_id: str) -> bool:
    return driver.execute_script(f"return !document.getElementById('{element_id}').hidden")


def test_pick_upscale_compare_and_download(site, browser, tmp_path):
    url, models = site
    d = browser
    d.get(url)
    wait(d, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    assert d.title == "EDSR super-resolution"
    assert "up to 20.0 MB and 50,000 pixels" in d.find_element(By.ID, "drop-help").text
    a = photo(40, 30)
    d.find_element(By.ID, "file").send_keys(str(write_png(tmp_path / "garden.png", a)))
    wait(d, lambda d: "40 \u00d7 30" in d.find_element(By.ID, "file-dims").text)
    assert d.find_element(By.ID, "file-name").text == "garden.png"
    assert "tiny-x2" in Select(d.find_element(By.ID, "model")).first_selected_option.text
    d.find_element(By.ID, "go").click()
    wait(d, lambda d: visible(d, "result"))
    assert not visible(d, "error"), d.find_element(By.ID, "error").text
    sizes = d.execute_script(
        "const b = document.getElementById('before'), a = document.getElementById('after');"
        "return [a.naturalWidth, a.naturalHeight, b.naturalWidth, b.naturalHeight];"
    )
    assert sizes == [80, 60, 80, 60]
    assert "40 \u00d7 30 \u2192 80 \u00d7 60" in d.find_element(By.ID, "result-info").text

    # the comparison slider moves the split; the zoom changes the scale of both images
    d.execute_script(
        "const s = document.getElementById('split'); s.value = '200';"
        "s.dispatchEvent(new Event('input'));"
    )
    clip_left = d.execute_script("return document.getElementById('after').style.clipPath")
    Select(d.find_element(By.ID, "zoom")).select_by_value("4")
    wait(d, lambda d: d.find_element(By.ID, "zoom-level").text == "400%")
    assert d.execute_script("return document.getElementById('stage').style.width") == "320px"
    assert clip_left.startswith("inset(")
    Select(d.find_element(By.ID, "zoom")).select_by_value("fit")

    if os.environ.get("EDSR_SERVE_SCREENSHOT"):
        d.save_screenshot(os.environ["EDSR_SERVE_SCREENSHOT"])

    # the download is the model's output, at the right size
    link = d.find_element(By.ID, "download")
    assert link.get_attribute("download") == "garden_x2.png"
    link.click()
    target = d.downloads / "garden_x2.png"
    wait(d, lambda d: target.exists() and not list(d.downloads.glob("*.crdownload")))
    got = np.asarray(Image.open(target).convert("RGB"))
    assert got.shape == (60, 80, 3)
    want = upscale(a, models[0].model, 2)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_drop_an_image_choose_mdsr_x3_with_ensemble(site, browser):
    url, _ = site
    d = browser
    d.get(url)
    wait(d, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    buf = io.BytesIO()
    Image.fromarray(photo(20, 16)).save(buf, "PNG")
    # a real drop event carrying a File, as a drag from the desktop delivers it
    d.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
        base64.b64encode(buf.getvalue()).decode(),
    )
    wait(d, lambda d: d.find_element(By.ID, "file-name").text == "dropped.png")
    Select(d.find_element(By.ID, "model")).select_by_value("tiny-mdsr")
    Select(d.find_element(By.ID, "scale")).select_by_value("3")
    d.find_element(By.ID, "ensemble").click()
    Select(d.find_element(By.ID, "format")).select_by_value("webp")
    d.find_element(By.ID, "go").click()
    wait(
        d,
        lambda d: (
            visible(d, "result") and "dropped.png" in d.find_element(By.ID, "result-info").text
        ),
    )
    size = d.execute_script(
        "const a = document.getElementById('after'); return [a.naturalWidth, a.naturalHeight];"
    )
    assert size == [60, 48]
    assert d.find_element(By.ID, "download").get_attribute("download") == "dropped_x3.webp"
    assert "with self-ensemble" in d.find_element(By.ID, "result-info").text


def test_errors_are_shown(site, browser, tmp_path):
    url, _ = site
    d = browser
    d.get(url)
    wait(d, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    # too many pixels: caught on the page before uploading
    d.find_element(By.ID, "file").send_keys(str(write_png(tmp_path / "big.png", photo(300, 200))))
    wait(d, lambda d: visible(d, "error"))
    assert "60,000 pixels" in d.find_element(By.ID, "error").text
    assert not d.find_element(By.ID, "go").is_enabled()
    # a damaged file the page cannot check: the server's message is shown
    good = io.BytesIO()
    Image.fromarray(photo(30, 30)).save(good, "PNG")
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.getvalue()[:200])
    d.find_element(By.ID, "file").send_keys(str(broken))
    wait(d, lambda d: d.find_element(By.ID, "go").is_enabled())
    d.find_element(By.ID, "go").click()
    wait(d, lambda d: visible(d, "error") and "corrupt" in d.find_element(By.ID, "error").text)
    assert d.find_element(By.ID, "go").is_enabled()  # ready for the next try


def test_api_docs_load_offline_and_list_the_operations(site, browser):
    url, _ = site
    d = browser
    d.get(url + "/docs")
    paths = wait(
        d,
        lambda d: (
            set(
                d.execute_script(
                    "return [...document.querySelectorAll('.opblock-summary-path')]"
                    ".map(e => e.getAttribute('data-path'))"
                )
            )
            >= {"/v1/upscale", "/v1/models", "/v1/progress/{job}", "/healthz"}
        ),
        timeout=20,
    )
    assert paths
    # everything the page loaded came from the server itself
    loaded = d.execute_script(
        "return [...document.scripts].map(s => s.src).filter(Boolean)"
        ".concat([...document.querySelectorAll('link[href]')].map(l => l.href))"
        ".concat(performance.getEntriesByType('resource').map(e => e.name))"
    )
    assert any(u.endswith("swagger-ui-bundle.js") for u in loaded), loaded
    assert all(u.startswith(url + "/") for u in loaded), loaded
    # and the operation's form knows the server's choices
    d.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-summary").click()
    wait(d, lambda d: "image *" in d.find_element(By.CSS_SELECTOR, ".opblock-post").text)
    d.find_element(By.CSS_SELECTOR, ".opblock-post .try-out__btn").click()
    options = wait(
        d,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.opblock-post select option')]"
            ".map(o => o.textContent)"
        ),
    )
    assert {"tiny-x2", "tiny-mdsr", "bicubic", "2", "3", "webp"} <= set(options), options
