"""The upload page in a real headless Chromium: choose a file, see the image and the bars.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``; elsewhere ``IMGCLF_CHROMIUM``/``IMGCLF_CHROMEDRIVER`` name a Chrome
and its driver) and selenium (requirements-dev.txt); skips with that reason otherwise,
and fails instead under ``CI=true`` (docs/testing.md). Selenium is pointed at
/usr/bin/chromedriver, so it never tries to download a driver.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.modelfactory import ProjectTree
from tests.support import missing_tool

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("IMGCLF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMGCLF_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    try:
        from selenium import webdriver
    except ImportError:
        missing_tool("selenium is not installed (requirements-dev.txt)")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not (Path(binary).is_file() or shutil.which(binary)):
            missing_tool(f"{binary} not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_shows_image_and_probability_bars(
    browser, api_url: str, project: ProjectTree, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = next(iter(sorted((project.raw / "5").iterdir())))
    expected = httpx.post(api_url + "/predict", files={"file": (image.name, image.read_bytes())})
    expected = expected.json()

    browser.get(api_url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "model " in d.find_element(By.ID, "model").text)
    assert expected["model_version"] in browser.find_element(By.ID, "model").text

    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "#bars .bar")))
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    shown = {
        b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars
    }
    assert shown == pytest.approx(expected["probabilities"], abs=1e-9)
    top = browser.find_element(By.CSS_SELECTOR, "#bars .bar.top")
    assert top.get_attribute("data-class") == expected["label"]
    assert browser.find_element(By.ID, "label").text.startswith(expected["label"] + " (")
    width = top.find_element(By.CSS_SELECTOR, ".fill").value_of_css_property("width")
    assert float(width.removesuffix("px")) > 0

    preview = browser.find_element(By.ID, "preview")
    assert preview.is_displayed()
    assert preview.get_attribute("src").startswith("blob:")
    assert browser.execute_script("return arguments[0].naturalWidth", preview) > 0

    # A bad file shows the server's message instead of bars.
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert browser.find_element(By.ID, "error").text.startswith("415:")
    assert not browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("415" in e["message"] for e in errors), errors  # only the expected failure


def _box(browser, element_id: str) -> dict[str, float]:
    """The element's bounding box in CSS pixels (as the screenshot shows it)."""
    return browser.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right};",
        element_id,
    )


def test_out_of_distribution_upload_shows_the_warning_not_a_green_bar(
    browser, api_url: str, project: ProjectTree, tmp_path: Path
) -> None:
    """Issue 14: a photo-sized noise image gets the "doesn't look like the training images"
    message and gray bars; a test digit does not. The drop zone no longer covers the line
    naming the model (asserted on bounding boxes; the screenshot is kept for people)."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "noise.png"
    pixels = np.random.default_rng(14).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    expected = httpx.post(api_url + "/predict", files={"file": (photo.name, photo.read_bytes())})
    assert expected.json()["in_distribution"] is False

    browser.set_window_size(1000, 900)
    browser.get(api_url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "model " in d.find_element(By.ID, "model").text)
    model, drop = _box(browser, "model"), _box(browser, "drop")
    assert model["bottom"] <= drop["top"], (model, drop)  # the model line stays readable

    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(ec.visibility_of_element_located((By.ID, "ood")))
    warning = browser.find_element(By.ID, "ood").text
    assert "doesn't look like the training images" in warning
    reasons = browser.find_elements(By.CSS_SELECTOR, "#ood-reasons li")
    assert [r.text for r in reasons] == expected.json()["ood_reasons"]
    label = browser.find_element(By.ID, "label").text
    assert label.startswith(f"model's guess: {expected.json()['label']} (")
    top = browser.find_element(By.CSS_SELECTOR, "#bars .bar.top .fill")
    assert top.value_of_css_property("background-color") == "rgba(163, 171, 185, 1)"  # gray
    shot = Path(os.environ.get("IMGCLF_SCREENSHOT_DIR", tmp_path)) / "page_ood.png"
    assert browser.save_screenshot(str(shot))
    model_after = _box(browser, "model")
    assert model_after["bottom"] <= _box(browser, "drop")["top"]

    # A digit the flag passes (95 % of the test split do): the warning goes, the bar is green.
    for digit in sorted((project.raw / "3").iterdir()):
        answer = httpx.post(api_url + "/predict", files={"file": ("d.png", digit.read_bytes())})
        if answer.json()["in_distribution"]:
            break
    browser.find_element(By.ID, "file").send_keys(str(digit))
    wait.until(ec.invisibility_of_element_located((By.ID, "ood")))
    wait.until(lambda d: d.find_element(By.ID, "label").text.startswith(answer.json()["label"]))
    green = browser.find_element(By.CSS_SELECTOR, "#bars .bar.top .fill")
    assert green.value_of_css_property("background-color") == "rgba(27, 158, 90, 1)"
    browser.save_screenshot(str(shot.with_name("page_in_distribution.png")))
