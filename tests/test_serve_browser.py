"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
loads the page from `python -m captioner.serve` started here on 127.0.0.1, uploads photos, waits for the
captions, moves the pointer over a word and checks that the overlay changes, reaches every control
with the keyboard, checks the page's bicubic upsampling against render.upsample, and saves a
screenshot (to $CAPTIONER_SCREENSHOT when set, e.g. docs/serve.png; otherwise into the test's
temporary folder). Without Chromium the test is skipped, except under CI=true, where it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_client import HARD, SOFT
from serve_process import running_server

from captioner.data.shapes import make_scene
from captioner.render import upsample

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _need_browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = (f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; "
                   "pip install selenium): .ci/run installs them")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def server():
    _need_browser()
    with running_server([SOFT, HARD], env={"OMP_NUM_THREADS": "1"}) as (proc, url):
        yield url


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,940", "--force-device-scale-factor=1", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def photo_files(folder: Path) -> list[Path]:
    """Two shapes scenes: a PNG and a JPEG of photo size (the shapes model's kind of picture)."""
    paths = []
    for index, (fmt, side) in enumerate((("PNG", 64), ("JPEG", 480))):
        image = Image.fromarray(make_scene(0, index + 4).image).resize((side, side), Image.BICUBIC)
        path = folder / f"scene{index}.{fmt.lower()}"
        image.save(path, fmt)
        paths.append(path)
    return paths


def wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def canvas_data(card):
    return card.parent.execute_script("return arguments[0].querySelector('canvas').toDataURL();", card)


def test_page_captions_uploaded_photos_and_the_overlay_follows_the_word_under_the_pointer(server, browser,
                                                                                           tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(server)
    wait(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 2)
    picker = Select(browser.find_element(By.ID, "model"))
    assert [o.get_attribute("value") for o in picker.options][:2] == ["shapes_soft", "shapes_hard"]
    assert picker.first_selected_option.get_attribute("value") == "shapes_soft"

    # Two photos at once, as a person choosing several files.
    paths = photo_files(tmp_path)
    browser.find_element(By.ID, "photos").send_keys("\n".join(str(p) for p in paths))
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done")) == 2)
    assert browser.find_elements(By.CSS_SELECTOR, ".result.failed") == []
    assert "Captioned 2 of 2" in browser.find_element(By.ID, "status").text

    card = next(c for c in browser.find_elements(By.CSS_SELECTOR, ".result")
                if c.find_element(By.CSS_SELECTOR, ".name").text == "scene0.png")
    words = card.find_elements(By.CSS_SELECTOR, "button.word")
    assert len(words) >= 4
    rows = card.find_elements(By.CSS_SELECTOR, ".candidates tbody tr")
    assert 1 <= len(rows) <= 3 and rows[0].text.startswith(" ".join(w.text for w in words))
    first = canvas_data(card)
    assert card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-word") == "0"

    # Point at a later word: its map replaces the first one's.
    target = 2 if words[2].text != words[0].text else 3
    ActionChains(browser).move_to_element(words[target]).perform()
    wait(browser, lambda d: card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-word") == str(target))
    assert canvas_data(card) != first
    assert words[target].get_attribute("aria-pressed") == "true"
    assert words[0].get_attribute("aria-pressed") == "false"
    assert f"“{words[target].text}”" in card.find_element(By.CSS_SELECTOR, "figcaption").text

    # The slider moves through the words too.
    slider = card.find_element(By.CSS_SELECTOR, ".slider")
    browser.execute_script("arguments[0].value = '1'; arguments[0].dispatchEvent(new Event('input'));", slider)
    wait(browser, lambda d: card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-word") == "1")

    # The same card in the screenshot, showing an object word's attention.
    object_word = next((i for i, w in enumerate(words) if w.text in ("circle", "square", "triangle")), target)
    ActionChains(browser).move_to_element(card.find_element(By.CSS_SELECTOR, "h2")) \
        .move_to_element(words[object_word]).perform()
    wait(browser, lambda d: card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-word")
         == str(object_word))
    browser.execute_script("window.scrollTo(0, 0);")
    shot = Path(os.environ.get("CAPTIONER_SCREENSHOT") or tmp_path / "serve.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 800

    # Nothing was loaded from anywhere but this server.
    origins = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert origins and all(u.startswith(server.rstrip("/")) or u.startswith("data:") for u in origins), origins


def test_hard_attention_model_shows_the_attended_cell(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(server)
    wait(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 2)
    Select(browser.find_element(By.ID, "model")).select_by_value("shapes_hard")
    path = photo_files(tmp_path)[0]
    browser.find_element(By.ID, "photos").send_keys(str(path))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result.done"))
    card = browser.find_element(By.CSS_SELECTOR, ".result.done")
    assert "attended cell: row" in card.find_element(By.CSS_SELECTOR, "figcaption").text
    label = card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("aria-label")
    assert "attended cell" in label


def test_every_control_is_reachable_with_the_keyboard(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server)
    browser.find_element(By.ID, "photos").send_keys(str(photo_files(tmp_path)[0]))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result.done"))
    card = browser.find_element(By.CSS_SELECTOR, ".result.done")
    n_words = len(card.find_elements(By.CSS_SELECTOR, "button.word"))
    browser.execute_script("document.activeElement && document.activeElement.blur(); window.focus();")
    browser.find_element(By.TAG_NAME, "body").click()
    reached = []
    for _ in range(n_words + 10):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.execute_script(
            "const e = document.activeElement;"
            "if (e.classList.contains('word')) return 'word ' + [...e.parentNode.children].indexOf(e);"
            "return e.id || e.className || e.tagName;"))
    for control in ("photos", "model", "beam", "slider"):
        assert any(control in r for r in reached), (control, reached)
    assert {r for r in reached if r.startswith("word ")} == {f"word {i}" for i in range(n_words)}, reached
    # A word reached by Tab shows its attention, as the pointer does; the slider answers arrow keys.
    card.find_elements(By.CSS_SELECTOR, "button.word")[1].send_keys("")     # focus
    wait(browser, lambda d: card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-word") == "1")
    card.find_element(By.CSS_SELECTOR, ".slider").send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-word") == "2")
    # Every form control has a label a screen reader can announce.
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML);")
    assert unlabelled == []


@pytest.mark.parametrize("grid", [8, 14])
def test_page_upsampling_is_render_upsample(server, browser, grid):
    browser.get(server)
    wait(browser, lambda d: d.execute_script("return !!window.captionerOverlay;"))
    alphas = torch.softmax(torch.randn(1, grid * grid, generator=torch.Generator().manual_seed(grid)) * 3, dim=1)
    side = 96
    page = browser.execute_script("return Array.from(window.captionerOverlay.upsample(arguments[0], arguments[1]));",
                                  alphas.view(grid, grid).tolist(), side)
    expected = upsample(alphas, grid, side)[0]
    assert np.abs(np.array(page).reshape(side, side) - expected).max() < 1e-4
