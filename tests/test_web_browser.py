"""The web page in a real browser: headless Chromium from Debian's packages, driven by Selenium.

``llm-dit serve --profile tiny`` runs as a separate process (the command a person types). The test
fills the generate form, uploads a reference, waits for the picture, starts a named experiment,
watches its run page fill in, opens a cell's record and the report, and saves a screenshot of each
page under its temporary folder (and under ``$LLM_DIT_SCREENSHOTS`` when set: docs/web.md's images).

Skipped, with the reason, where Chromium, chromedriver or Selenium is missing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from web_client import start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)"),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="needs selenium (pip install selenium)"),
]
PROMPT = "A simple cartoon house with a red roof"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache):
    runs = tmp_path_factory.mktemp("runs")
    proc, url = start_server(runs, runs.parent / "serve.log")
    yield url, runs
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shot(driver, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot (the window grows to the page's height first)."""
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return Math.max(document.documentElement.scrollHeight, 900)")
    driver.set_window_size(1440, min(height + 40, 2400))
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    if os.environ.get("LLM_DIT_SCREENSHOTS"):
        target = Path(os.environ["LLM_DIT_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def until(driver, condition, timeout: float = 180, what: str = ""):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders its lists as they change: an element found a moment ago may be gone
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(condition, message=what)


def test_generate_page_makes_a_picture(server, browser, tmp_path, refs):
    from selenium.webdriver.common.by import By

    url, runs = server
    browser.get(url + "/")
    until(browser, lambda d: d.find_element(By.ID, "f-alpha"), 30, "the form is built")
    # every recipe field has a control on the page
    from llm_dit.conditioning import Recipe

    for name in set(Recipe.model_fields) - {"references"}:
        assert browser.find_elements(By.ID, "f-" + name), name
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "file").send_keys(refs[0])
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#refs .ref img"), 30, "the reference is uploaded")
    alpha = browser.find_element(By.ID, "f-alpha")
    alpha.clear()
    alpha.send_keys("0.5")
    browser.find_element(By.ID, "generate").click()
    img = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#result img.picture"), 180, "the picture")[0]
    until(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 30)
    table = browser.find_element(By.CSS_SELECTOR, "#result table.stats").text
    assert "blended_std" in table and "vl_std" in table and "0.5" in table
    assert list((runs / "generated").glob("*.png"))
    assert shot(browser, tmp_path, "generate").stat().st_size > 10_000
    # a preset fills the controls in
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "preset")).select_by_value("style_transfer")
    assert Select(browser.find_element(By.ID, "f-blend")).first_selected_option.text == "adain_per_dim"
    assert browser.find_element(By.ID, "f-steps").get_attribute("value") == "4"
    Select(browser.find_element(By.ID, "preset")).select_by_value("")
    # a refused request names the field on the page
    browser.find_element(By.ID, "f-steps").clear()
    browser.find_element(By.ID, "f-steps").send_keys("0")
    browser.find_element(By.ID, "generate").click()
    until(browser, lambda d: "generation.steps" in d.find_element(By.ID, "form-error").text, 30, "the error")
    # a long job is cancelled from the jobs list
    steps = browser.find_element(By.ID, "f-steps")
    steps.clear()
    steps.send_keys("1000")
    browser.find_element(By.ID, "generate").click()
    until(browser, lambda d: d.execute_script(
        "const b = document.querySelector('#jobs li button.cancel'); if (b) b.click(); return !!b;"), 60, "cancel")
    until(browser, lambda d: "cancelled" in d.find_element(By.CSS_SELECTOR, "#jobs li").text.lower(), 60,
          "the job is cancelled")
    # the result panel follows the job's own event stream, which may arrive after the jobs list's poll
    until(browser, lambda d: "cancelled" in d.find_element(By.ID, "result").text.lower(), 30,
          "the result panel says cancelled")
    # "run as sweep": one control becomes a list, and the run page opens
    steps.clear()
    steps.send_keys("4")
    Select(browser.find_element(By.ID, "sweep-field")).select_by_value("alpha")
    browser.find_element(By.ID, "sweep-values").send_keys("0.2, 0.6")
    browser.find_element(By.ID, "run-sweep").click()
    until(browser, lambda d: "/runs/sweep-" in d.current_url, 30, "the sweep's run page")
    until(browser, lambda d: "complete" in d.find_element(By.ID, "run-info").text.lower(), 120, "the sweep completes")
    names = [c.get_attribute("data-cell") for c in browser.find_elements(By.CSS_SELECTOR, "#run-cells .cell")]
    assert names == ["text_only", "alpha0.2", "alpha0.6"], names


def test_runs_page_starts_an_experiment_and_shows_it(server, browser, tmp_path, refs):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, runs = server
    browser.get(url + "/runs")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#exp-name option"), 30, "the experiments")
    Select(browser.find_element(By.ID, "exp-name")).select_by_value("vl_only_vs_qwen3")
    browser.find_element(By.ID, "exp-prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "exp-files").send_keys(refs[0])
    browser.find_element(By.ID, "exp-run").send_keys("browser-run")
    browser.find_element(By.ID, "exp-start").click()
    until(browser, lambda d: d.current_url.endswith("/runs/browser-run"), 30, "the run page opens")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#run-grids img"), 240, "the grid")
    until(browser, lambda d: "complete" in d.find_element(By.ID, "run-info").text.lower(), 60,
          "the run completes: " + browser.find_element(By.ID, "run-info").text)
    cells = browser.find_elements(By.CSS_SELECTOR, "#run-cells .cell")
    assert len(cells) == 4 and all(c.find_elements(By.TAG_NAME, "img") for c in cells)
    until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#run-grids img')].every(i => i.complete && i.naturalWidth > 0)"), 30)
    # the run page opens as report.html does (the same reader and HTML): the answer, the cell table
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#run-summary .answer"), 30, "the answers")
    summary = browser.find_element(By.ID, "run-summary").text
    assert "Does pure_vl_text_tokens match pure_qwen3_4b quality?" in summary and "Tiny random-weight" in summary
    rows = browser.find_elements(By.CSS_SELECTOR, "#run-summary table.runcells tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.name").text.split(" (")[0] for r in rows] == [
        "pure_qwen3_4b", "pure_vl_text_tokens", "pure_vl_full_seq", "blend_30_vl_70_qwen3"]
    assert browser.execute_script(
        "return [...document.querySelectorAll('#run-summary img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    browser.find_element(By.CSS_SELECTOR, '[data-cell="pure_vl_full_seq"]').click()
    record = until(browser, lambda d: d.find_elements(By.ID, "cell-record"), 10, "the cell's record")[0].text
    assert '"name": "pure_vl_full_seq"' in record and '"vl_std"' in record
    assert shot(browser, tmp_path, "run").stat().st_size > 10_000
    report = browser.find_element(By.ID, "report-link").get_attribute("href")
    browser.get(report)
    assert "pure_vl_full_seq" in browser.page_source
    browser.get(url + "/runs")
    row = until(browser, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
                                    if "browser-run" in r.text], 30, "the run is listed")[0]
    assert "complete" in row.text.lower() and "4/4" in row.text and "vl_only_vs_qwen3" in row.text
    assert shot(browser, tmp_path, "runs").stat().st_size > 10_000


def test_a_cancelled_run_is_resumed_from_its_page(server, browser):
    """A run that stopped part-way (cancelled here; a server restart leaves the same) offers a resume
    button that makes only its missing cells."""
    from selenium.webdriver.common.by import By
    from web_client import Http, wait

    url, runs = server
    c = Http(url)
    job = c.post("/api/sweeps", json={"prompt": PROMPT, "name": "to-resume", "axes": {"seed": ["1", "2", "3"]},
                                      "generation": {"steps": 40, "width": 64, "height": 64}}).json()
    end = time.monotonic() + 120
    while c.get(f"/api/jobs/{job['id']}").json()["progress"]["cells_done"] < 1 and time.monotonic() < end:
        time.sleep(0.05)
    c.post(f"/api/jobs/{job['id']}/cancel")
    assert wait(c, job["id"])["state"] == "cancelled"
    done = {p.name for p in (runs / "to-resume" / "cells").glob("*.json")}
    browser.get(url + "/runs/to-resume")
    button = until(browser, lambda d: d.find_element(By.ID, "resume-run"), 30, "the resume button")
    assert f"{3 - len(done)} cell" in button.text
    button.click()
    until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#run-info .state").text.lower() == "complete", 180,
          "the resumed run to complete")
    assert not browser.find_elements(By.ID, "resume-run")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#run-cells .cell img")) == 3


def test_a_damaged_run_folder_is_listed_and_says_what_is_wrong(server, browser, tmp_path):
    """A folder whose run.json a power cut zeroed: on the runs page beside the others, marked
    damaged, and its page names the file and what to do."""
    from selenium.webdriver.common.by import By

    url, runs = server
    (runs / "broken" / "cells").mkdir(parents=True)
    (runs / "broken" / "run.json").write_bytes(bytes(200))
    browser.get(url + "/runs")
    row = until(browser, lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
                                         if r.text.startswith("broken")), None), 30, "the damaged folder in the list")
    assert "DAMAGED" in row.text.upper() and "is not a run's plan" in row.text
    shot(browser, tmp_path, "runs-damaged")
    browser.get(url + "/runs/broken")
    info = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#run-info .state.damaged").find_element(
        By.XPATH, ".."), 30, "the damaged run's page")
    assert "run.json is not a run's plan" in info.text and "to resume it" in info.text
    shot(browser, tmp_path, "run-damaged")


def test_the_single_file_report_opens_alone_in_a_browser(browser, refs, tmp_path):
    """report_single.html copied alone into an empty folder: every picture shows, nothing else loads."""
    from run_args import compare_args

    from llm_dit.cli import main

    out = tmp_path / "run"
    assert main([*compare_args("vl_only_vs_qwen3", refs, out), "--no-progress"]) == 0
    assert main(["report", str(out), "--single-file"]) == 0
    alone = tmp_path / "sent"
    alone.mkdir()
    shutil.copy(out / "report_single.html", alone / "report.html")
    browser.get((alone / "report.html").as_uri())
    images = browser.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth])")
    assert len(images) >= 6 and all(done and width > 0 for done, width in images)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "Does pure_vl_text_tokens match pure_qwen3_4b quality?" in browser.page_source
