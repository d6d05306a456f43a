"""The web console driven in a real headless Chromium (Debian's chromium
and chromium-driver) as a person would: sign in, open a source, start a
run and watch it complete, sort by status, filter by type, open a run's
tables and messages, search its tasks by each rule, cancel a slow run,
see a second run rejected, retry where allowed, and find another
organization's run not found; then the rest of sluice: a table import
job's queries (query now, pause, resume), a deployment's run whose log
the page follows live, a trigger's files and runs, the datalake and the
action API's workflow with its reset. A screenshot of each page is saved
under `test-artifacts/console/`."""
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.support.ui import Select
from selenium.webdriver.support.ui import WebDriverWait as _Wait

import requests

from conftest import code_archive, postgres_databases, psql, wait_for
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
    # A page that loads itself again can drop an element between finding
    # and reading it (Chromium: "Node with given id does not belong to the
    # document"): such a look is tried again until the wait's end.
    return _Wait(driver, timeout, poll_frequency=poll_frequency,
                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                                     WebDriverException))


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


def replaced(element):
    """True once the page that held `element` has been replaced (Chromium
    may say so with "Node with given id does not belong to the document"
    instead of a stale element: any refusal to read it counts)."""
    def check(_):
        try:
            element.is_enabled()
            return False
        except WebDriverException:  # StaleElementReferenceException among them
            return True
    return check


def search(driver, text):
    form = driver.find_element(By.CSS_SELECTOR, "form[role=search]")
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    # The box already holds `text` on the old page: wait for the answer's
    # page first, then read it.
    _Wait(driver, 10).until(replaced(form))
    WebDriverWait(driver, 10).until(lambda d: "q=" + quote_plus(text) in d.current_url
                                    and d.find_element(By.ID, "q").get_attribute("value") == text)
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


SLOW_HANDLER = """
import time

def handler(request, context):
    for i in range(12):
        print("line", i, flush=True)
        time.sleep(0.4)
    return {"ok": True}
"""


def import_job(s, org, tmp_path, src, dst):
    psql(src, """CREATE TABLE events (id bigint PRIMARY KEY, ts timestamptz NOT NULL, label text,
        changed_at timestamptz NOT NULL);
        INSERT INTO events SELECT g, timestamptz '2026-01-01' + g * interval '1 s', 'l' || g,
        timestamptz '2026-01-01' + g * interval '1 s' FROM generate_series(1, 500) g""")
    f = tmp_path / "job.toml"
    f.write_text(f"""name = "events"
source = "{src}"
table = "events"
destination = "{dst}"
target = "events"
[schema]
predictionId = "id"
timestamp = "ts"
predictionLabel = "label"
changeTimestamp = "changed_at"
[ingestion]
refreshIntervalMinutes = 600
""")
    return s.cli_json("job", "create", "--org", org, "--file", str(f))["job"]["id"]


def deployment_with_run(s, org, handler):
    """A deployment whose code is `handler`, and a run of it."""
    h = {"Authorization": f"Bearer {s.jwt(org)}"}
    dep = requests.post(f"{s.url}/organizations/{org}/deployments", json={"name": "follow-me"},
                        headers=h).json()["deployment_id"]
    ver = requests.post(f"{s.url}/organizations/{org}/deployments/{dep}/versions", headers=h,
                        json={"version": "0.0.1", "handler": "main:handler",
                              "image": "abeja-inc/all-cpu:19.10"}).json()
    assert requests.put(ver["upload_url"], data=code_archive({"main.py": handler})).status_code == 200
    run = requests.post(f"{s.url}/organizations/{org}/deployments/{dep}/runs", headers=h,
                        json={"version_id": ver["version_id"]}).json()["run_id"]
    return dep, ver["version_id"], run


def log_lines(driver):
    return [li.find_element(By.CSS_SELECTOR, ".msg").text for li in driver.find_elements(By.CSS_SELECTOR, "#log li")]


def test_a_person_steers_jobs_follows_a_log_and_resets_a_workflow(sluice, browser, tmp_path):
    org, user, token = sluice.new_org()
    other_org = sluice.new_org()[0]
    d = browser
    with postgres_databases("sluice_console") as (src, dst):
        jid = import_job(sluice, org, tmp_path, src, dst)
        sign_in(d, sluice, user, token)
        # A job's queries: query now, watch it complete, read its tasks.
        d.find_element(By.LINK_TEXT, "Import jobs").click()
        assert d.find_element(By.LINK_TEXT, "events").is_displayed()
        shot(d, "jobs")
        d.find_element(By.LINK_TEXT, "events").click()
        # A new job is due at once: its first query loads the table.
        WebDriverWait(d, 60, poll_frequency=0.5).until(
            lambda d: (d.refresh() or True) and "Completed" in d.find_element(By.ID, "queries").text)
        psql(src, """INSERT INTO events SELECT g, timestamptz '2026-01-01' + g * interval '1 s', 'l' || g,
            timestamptz '2026-01-01' + g * interval '1 s' FROM generate_series(501, 600) g""")
        d.find_element(By.ID, "query-now").click()
        WebDriverWait(d, 10).until(lambda d: "/queries/" in d.current_url)
        WebDriverWait(d, 60, poll_frequency=0.5).until(lambda d: heading_status(d) == "Completed")
        assert {"extract", "load"} <= tasks_shown(d)
        shot(d, "query")
        d.find_element(By.LINK_TEXT, "events").click()
        row = d.find_element(By.CSS_SELECTOR, "#queries tbody tr")
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == "Completed" and cells[3] == "100", cells
        assert len(d.find_elements(By.CSS_SELECTOR, "#queries tbody tr")) == 2
        shot(d, "job")
        d.find_element(By.ID, "pause").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.ID, "resume"))
        assert heading_status(d) == "paused"
        assert sluice.cli_json("job", "show", jid, "--org", org)["status"] == "paused"
        d.find_element(By.ID, "resume").click()
        WebDriverWait(d, 10).until(lambda d: d.find_elements(By.ID, "pause"))
        assert heading_status(d) == "active"

    # A run's log, followed live: lines arrive while the run is under way
    # and the page is not loaded again until the run has ended.
    dep, ver, run = deployment_with_run(sluice, org, SLOW_HANDLER)
    d.find_element(By.LINK_TEXT, "Deployments").click()
    shot(d, "deployments")
    d.find_element(By.LINK_TEXT, "follow-me").click()
    d.find_element(By.LINK_TEXT, run).click()
    d.execute_script("window.sluiceMarker = 'same page';")
    WebDriverWait(d, 30).until(lambda d: heading_status(d) == "Running" and len(log_lines(d)) >= 2)
    seen = len(log_lines(d))
    WebDriverWait(d, 30).until(lambda d: len(log_lines(d)) > seen)
    assert d.execute_script("return window.sluiceMarker") == "same page", "the page reloaded"
    assert heading_status(d) == "Running", "the lines came while the run was under way"
    shot(d, "run-log-following")
    WebDriverWait(d, 60, poll_frequency=0.5).until(lambda d: heading_status(d) == "Completed")
    assert [l for l in log_lines(d) if not l.startswith("[sluice]")] == [f"line {i}" for i in range(12)]
    assert d.find_element(By.CSS_SELECTOR, "#attempts tbody tr").text
    shot(d, "run-log-done")

    # The datalake and a trigger: which file started which run.
    h = {"Authorization": f"Bearer {sluice.jwt(org)}"}
    channel = requests.post(f"{sluice.url}/organizations/{org}/channels", headers=h,
                            json={"name": "inbox", "storage_type": "datalake"}).json()["channel"]["channel_id"]
    tri = requests.post(f"{sluice.url}/organizations/{org}/deployments/{dep}/triggers", headers=h,
                        json={"version_id": ver, "input_service_name": "datalake",
                              "input_service_id": channel}).json()["trigger_id"]
    file = requests.post(f"{sluice.url}/channels/{channel}/upload", data=b"hello",
                         headers=dict(h, **{"Content-Type": "text/plain"})).json()["file_id"]
    d.find_element(By.LINK_TEXT, "Datalake").click()
    d.find_element(By.LINK_TEXT, channel).click()
    assert file in d.find_element(By.ID, "files").text
    shot(d, "channel")
    d.get(f"{sluice.url}/deployments/{dep}/triggers/{tri}")
    WebDriverWait(d, 30, poll_frequency=0.5).until(
        lambda d: (d.refresh() or True) and "Started a run" in d.find_element(By.ID, "events").text)
    started = d.find_element(By.CSS_SELECTOR, "#events tbody tr td:nth-child(4) a").text
    assert file in d.find_element(By.ID, "events").text
    shot(d, "trigger")
    d.find_element(By.CSS_SELECTOR, "#events tbody tr td:nth-child(4) a").click()
    assert d.find_element(By.TAG_NAME, "h1").text.startswith(f"Run {started}")

    # A workflow's fan-in, and its reset.
    sluice.cli("org", "account", org, "000123")
    wf = tmp_path / "workflow.json"
    wf.write_text("""{"$schema": "http://jsonschema.tailer.ai/schema/workflow-veditor",
        "configuration_type": "workflow", "configuration_id": "000123-fan-in", "version": "2",
        "environment": "DEV", "account": "000123", "gcp_project_id": "acme",
        "authorized_job_ids": ["gbq-to-gbq|000123_JA_DEV", "gbq-to-gbq|000123_JB_DEV"],
        "target_dag": {"configuration_type": "table-to-table", "configuration_id": "000123_JT_DEV"}}""")
    sluice.cli("config", "deploy", str(wf), "--org", org)
    d.find_element(By.LINK_TEXT, "Configurations").click()
    shot(d, "configurations")
    d.find_element(By.LINK_TEXT, "000123-fan-in").click()
    awaited = d.find_elements(By.CSS_SELECTOR, "#fan-in tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in awaited] == ["waiting", "waiting"]
    d.find_element(By.ID, "reset").click()
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.ID, "fan-in"))
    assert d.current_url.endswith("/configurations/000123-fan-in")
    shot(d, "workflow")

    # Another organization's run or deployment in the address: not found.
    other_dep, _, other_run = deployment_with_run(sluice, other_org, SLOW_HANDLER)
    for path in (f"/deployments/{other_dep}/runs/{other_run}", f"/deployments/{other_dep}"):
        d.get(sluice.url + path)
        assert d.find_element(By.TAG_NAME, "h1").text.startswith("404"), path
    shot(d, "not-found")
