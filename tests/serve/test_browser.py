"""A real browser (Debian's headless Chromium through Selenium) loads the page from a server on a free localhost
port, picks a built-in task, makes an adapter, runs its inputs and sees the adapter's outputs — the same as
``Tagi.predict`` — next to the base model's; then it saves a screenshot.

Skipped only when ``chromium`` / ``chromedriver`` are not installed (``.ci/run`` installs them). Waits are DOM
conditions with generous timeouts that only turn a hang into a failure. The README's screenshot comes from
this test run against the demo checkpoint::

    TAGI_SERVE_CHECKPOINT=runs/demo/finetune/final TAGI_SERVE_SCREENSHOT=docs/serve.png \\
        python -m pytest tests/serve/test_browser.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_testing import WAIT_S, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="chromium and chromium-driver not installed"
)
MT = 8


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,1500",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def live(server, backbones):
    """The module's tiny server, or the checkpoint named by ``TAGI_SERVE_CHECKPOINT`` (README screenshot)."""
    ckpt = os.environ.get("TAGI_SERVE_CHECKPOINT")
    if not ckpt:
        yield server
        return
    with running_server(Path(ckpt), None) as srv:
        yield srv


def wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition)
    except TimeoutException:
        status = driver.find_element("id", "status").text
        raise AssertionError(f"timed out waiting for {what} (page status: {status!r})") from None


def text_of(element) -> str:
    return element.get_property("textContent")


def test_make_and_try_an_adapter_in_the_page(browser, live, tmp_path):
    from selenium.webdriver.support.ui import Select

    browser.get(live.url + "/")
    wait(browser, lambda d: text_of(d.find_element("id", "status")) == "ready", "the page to load")
    task = "builtin_reverse_word_order"
    Select(browser.find_element("id", "task")).select_by_value(task)
    inputs = [x for x in browser.find_element("id", "inputs").get_property("value").split("\n") if x.strip()]
    assert inputs and browser.find_element("id", "instruction").get_property("value")
    browser.find_element("id", "max-tokens").send_keys(str(MT))
    browser.find_element("id", "make").click()
    adapter_id = wait(browser, lambda d: text_of(d.find_element("id", "adapter-id")), "the adapter")
    assert "rank" in text_of(browser.find_element("id", "adapter-info"))
    assert adapter_id in text_of(browser.find_element("id", "curl-snippet"))
    assert adapter_id in text_of(browser.find_element("id", "python-snippet"))
    browser.find_element("id", "run").click()
    done = "#results td.done.adapter-out, #results td.done.base-out"
    wait(browser, lambda d: len(d.find_elements("css selector", done)) == 2 * len(inputs), "the outputs")
    cells = browser.find_elements("css selector", "#results td.adapter-out")
    tagi = live.service.tagi
    instruction = browser.find_element("id", "instruction").get_property("value")
    want = tagi.predict(inputs, tagi.generate_adapter(instruction), max_new_tokens=MT)
    assert [text_of(c) for c in cells] == [w if w else "(empty)" for w in want]
    shot = Path(os.environ.get("TAGI_SERVE_SCREENSHOT") or tmp_path / "serve.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
