"""The upload page in a real headless Chromium: choose a file, see the image and the bars.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``) and selenium (requirements-dev.txt); skips with that reason
otherwise. Selenium is pointed at /usr/bin/chromedriver, so it never tries to
download a driver.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.modelfactory import ProjectTree

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("IMGCLF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMGCLF_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not (Path(binary).is_file() or shutil.which(binary)):
            pytest.skip(f"{binary} not found: apt-get install chromium chromium-driver")
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
