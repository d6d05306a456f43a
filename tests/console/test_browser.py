"""The web console driven in a real headless Chromium (Debian's chromium
and chromium-driver) as a person would: sign in, open a source, start a
run and watch it complete, sort by status, filter by type, open a run's
tables and messages, search its tasks by each rule, cancel a slow run,
see a second run rejected, retry where allowed, and find another
organization's run not found. A screenshot of each page is saved under
`test-artifacts/console/`."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import Select
from selenium.webdriver.support.ui import WebDriverWait as _Wait

from conftest import wait_for
from test_console import api_source

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"


@pytest.fixture
def browser():
    for exe in (CHROMIUM, CHROMEDRIVER):
        assert os.access(exe, os.X_OK), f"{exe} is missing: the test setup installs chromium and chromium-driver"
    profile = tempfile.mkdtemp(prefix="sluice-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def WebDriverWait(driver, timeout, poll_frequency=0.2):
    """Waits through the pages' own reloads (a run's page refreshes
    itself while the run is under way)."""
    return _Wait(driver, timeout, poll_frequency=poll_frequency,
                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def shot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def sign_in(driver, s, user, token):
    driver.get(s.url + "/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Sign in"
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.card button").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/sources"))


def heading_status(driver):
    return driver.find_element(By.CSS_SELECTOR, "h1 .st").text


def tasks_shown(driver):
    return {row.find_elements(By.TAG_NAME, "td")[0].text
            for row in driver.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")}


def search(driver, text):
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "q").get_attribute("value") == text)
    return tasks_shown(driver)


def test_a_person_watches_and_steers_api_runs(sluice, api, browser):
    org, user, token = sluice.new_org()
    other_org, other_user, other_token = sluice.new_org()
    api_source(sluice, org, api)
    d = browser
    sign_in(d, sluice, user, token)
    shot(d, "sources")
    d.find_element(By.LINK_TEXT, "shop").click()
    assert d.find_element(By.TAG_NAME, "h1").text == "shop"
    shot(d, "source-empty")
    # Start a run and watch it reach Completed (the page refreshes itself).
    d.find_element(By.XPATH, "//button[text()='Start an incremental run']").click()
    WebDriverWait(d, 10).until(lambda d: "/runs/" in d.current_url)
    run_url = d.current_url
    WebDriverWait(d, 120, poll_frequency=0.5).until(lambda d: heading_status(d) == "Completed")
    shot(d, "run-completed")
    assert not d.find_elements(By.ID, "cancel") and not d.find_elements(By.ID, "retry")
    # Tables and messages open from their counts.
    tables = d.find_element(By.CSS_SELECTOR, "#tables summary")
    assert tables.text == "Tables: 9"
    tables.click()
    assert d.find_element(By.XPATH, "//details[@id='tables']//h3[starts-with(., 'customers__tags')]").is_displayed()
    messages = d.find_element(By.CSS_SELECTOR, "#messages summary")
    messages.click()
    assert d.find_elements(By.CSS_SELECTOR, "#messages li")
    shot(d, "run-tables-messages")
    # The search box, one case per rule.
    assert search(d, "mc") == {"metadata_consolidation"}
    assert search(d, "consol") == {"metadata_consolidation", "table_consolidation"}
    assert "complete_ingestion" in search(d, "Compl")
    assert search(d, "questions") == {"metadata_consolidation", "table_consolidation", "ingestion"}
    assert {"customers", "orders"} <= search(d, "page(s)")
    shot(d, "run-search")
    # Back to the source: sort by Status, filter by type.
    d.find_element(By.LINK_TEXT, "shop").click()
    d.find_element(By.XPATH, "//th/a[starts-with(., 'Status')]").click()
    WebDriverWait(d, 10).until(lambda d: "sort=status" in d.current_url)
    assert d.find_element(By.XPATH, "//th[@aria-sort!='none']").text.startswith("Status")
    Select(d.find_element(By.ID, "type")).select_by_visible_text("destructive")
    d.find_element(By.XPATH, "//form[contains(@class, 'filters')]//button").click()
    WebDriverWait(d, 10).until(lambda d: "type=destructive" in d.current_url)
    assert "No run yet" in d.find_element(By.TAG_NAME, "main").text
    shot(d, "source-filtered")
    # A slow destructive run: a second start is rejected; cancel it.
    api.slow[("/orders", "2")] = 5
    api.requests.clear()
    d.find_element(By.XPATH, "//button[text()='Start a destructive run']").click()
    WebDriverWait(d, 10).until(lambda d: "/runs/" in d.current_url)
    slow_url = d.current_url
    wait_for(lambda: any(q.get("page") == "2" for q in api.fetched("/orders")), "the slow page")
    d.get(sluice.url + "/sources/shop")
    d.find_element(By.XPATH, "//button[text()='Start an incremental run']").click()
    WebDriverWait(d, 10).until(lambda d: "/runs/" in d.current_url)
    assert heading_status(d) == "Rejected - previous load still running"
    assert not d.find_elements(By.ID, "retry")
    shot(d, "run-rejected")
    d.get(slow_url)
    d.find_element(By.ID, "cancel").click()
    WebDriverWait(d, 10).until(lambda d: heading_status(d) in ("Canceling …", "Cancelled"))
    if heading_status(d) == "Canceling …":
        assert not d.find_element(By.ID, "cancel").is_enabled(), "Cancel can be pressed twice"
        shot(d, "run-canceling")
    WebDriverWait(d, 60, poll_frequency=0.5).until(lambda d: heading_status(d) == "Cancelled")
    assert not d.find_elements(By.ID, "cancel")
    shot(d, "run-cancelled")
    # Retry only on the most recent run, when it failed or was cancelled.
    api.slow.clear()
    d.get(run_url)
    assert not d.find_elements(By.ID, "retry")
    d.get(slow_url)
    d.find_element(By.ID, "retry").click()
    WebDriverWait(d, 120, poll_frequency=0.5).until(lambda d: heading_status(d) == "Completed")
    assert "run " + slow_url.rsplit("/", 1)[1] in d.find_element(By.CSS_SELECTOR, "dl.facts").text
    shot(d, "run-retried")
    # Another organization's person: the run's address is not found.
    d.find_element(By.XPATH, "//button[text()='Sign out']").click()
    WebDriverWait(d, 10).until(lambda d: d.current_url.endswith("/signin"))
    sign_in(d, sluice, other_user, other_token)
    d.get(run_url)
    assert d.find_element(By.TAG_NAME, "h1").text.startswith("404")
    shot(d, "other-organization-404")
