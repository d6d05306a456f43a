"""The web console's first pages, as a browser sends them (form posts, a
session cookie, redirects): sign in with a user id and personal access
token, the data sources, a source's runs sorted and filtered, the API Run
page with its tasks, tables, messages and search, Cancel and Retry — and
nothing of another organization's. (The same pages driven in a real
Chromium come next; see docs/console.md.)"""
import re

import requests

from conftest import wait_for
from fake_api import source_file


def sign_in(s, user, token):
    c = requests.Session()
    r = c.post(s.url + "/signin", data={"user": user, "token": token}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/sources", (r.status_code, r.text)
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie, cookie
    return c


def csrf(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def status_of(page):
    """The run's status as the page's heading shows it."""
    return re.search(r'<h1>API run \d+ <span class="st [^"]+">([^<]+)</span>', page).group(1)


def api_source(s, org, api, **extra):
    h = {"Authorization": f"Bearer {s.jwt(org)}"}
    r = requests.post(f"{s.url}/organizations/{org}/sources", json=dict(source_file(api.url), **extra), headers=h)
    assert r.status_code == 201, r.text


def test_sign_in_and_the_api_run_page(sluice, api):
    org, user, token = sluice.new_org()
    other_org, other_user, other_token = sluice.new_org()
    api_source(sluice, org, api)
    # Without a session: the sign-in form, 401.
    r = requests.get(sluice.url + "/sources")
    assert r.status_code == 401 and 'action="/signin"' in r.text and r.headers["Content-Type"].startswith("text/html")
    r = requests.post(sluice.url + "/signin", data={"user": user, "token": "wrong"}, allow_redirects=False)
    assert r.status_code == 401 and "invalid user id or personal access token" in r.text
    c = sign_in(sluice, user, token)
    res = c.get(sluice.url + "/sources")
    page = res.text
    # Never framed; scripts and styles from sluice only.
    assert res.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
    assert 'href="/sources/shop"' in page and "no run yet" in page
    # A form without (or with another session's) CSRF token changes nothing.
    other = sign_in(sluice, other_user, other_token)
    theirs = csrf(other.get(sluice.url + "/sources").text)
    for bad in ("", theirs):
        r = c.post(sluice.url + "/sources/shop/runs", data={"csrf": bad, "type": "incremental"},
                   allow_redirects=False)
        assert r.status_code == 403, r.text
    assert "no run yet" in c.get(sluice.url + "/sources").text
    # Start a run from the source's page; its page refreshes until it ends.
    r = c.post(sluice.url + "/sources/shop/runs", data={"csrf": csrf(page), "type": "incremental"},
               allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"].startswith("/runs/"), r.text
    run_url = sluice.url + r.headers["Location"]
    rid = r.headers["Location"].rsplit("/", 1)[1]
    page = wait_for(lambda: (lambda p: p if status_of(p) in ("Completed", "Failed") else None)(
        c.get(run_url).text), "the run to end", timeout=120)
    assert status_of(page) == "Completed", page
    assert 'http-equiv="refresh"' not in page and 'id="cancel"' not in page and 'id="retry"' not in page
    for task in ("metadata_consolidation", "table_consolidation", "complete_ingestion", "customers"):
        assert f"<td>{task}</td>" in page, task
    assert "Tables: 9" in page and "customers__tags" in page
    assert re.search(r"Messages: [1-9]", page), "the tasks' messages are counted"
    # Search: the page's five rules, one case each.
    def found(q):
        p = c.get(run_url, params={"q": q}).text
        tasks = p.split('<table id="tasks">', 1)[1].split("</table>", 1)[0] if 'id="tasks"' in p else ""
        return set(re.findall(r"<tr><td>([a-z_ ()0-9]+)</td>", tasks))
    assert found("mc") == {"metadata_consolidation"}
    assert found("consol") == {"metadata_consolidation", "table_consolidation"}
    assert "complete_ingestion" in found("Compl")
    assert found("questions") == {"metadata_consolidation", "table_consolidation", "ingestion"}
    assert found("record(s)") >= {"customers", "orders"}
    # The source's runs: sorted by a header's link, filtered by type.
    src = c.get(sluice.url + "/sources/shop", params={"sort": "status", "order": "asc"}).text
    assert f'href="/runs/{rid}"' in src and 'aria-sort="ascending"' in src
    assert f'href="/runs/{rid}"' not in c.get(sluice.url + "/sources/shop", params={"type": "destructive"}).text
    assert "Typical durations" in src
    # Another organization's run and source are not found.
    assert other.get(run_url).status_code == 404
    assert other.get(sluice.url + "/sources/shop").status_code == 404
    r = other.post(run_url + "/cancel", data={"csrf": theirs}, allow_redirects=False)
    assert r.status_code == 404
    # Signing out ends the session.
    r = c.post(sluice.url + "/signout", data={"csrf": csrf(src)}, allow_redirects=False)
    assert r.status_code == 303 and "Max-Age=0" in r.headers["Set-Cookie"]
    c.cookies.clear()
    assert c.get(sluice.url + "/sources").status_code == 401


def test_cancel_shows_canceling_then_retry_where_allowed(sluice, api):
    org, user, token = sluice.new_org()
    api_source(sluice, org, api)
    c = sign_in(sluice, user, token)
    api.slow[("/orders", "2")] = 4
    token_ = csrf(c.get(sluice.url + "/sources/shop").text)
    r = c.post(sluice.url + "/sources/shop/runs", data={"csrf": token_, "type": "destructive"},
               allow_redirects=False)
    run_url = sluice.url + r.headers["Location"]
    wait_for(lambda: any(q.get("page") == "2" for q in api.fetched("/orders")), "the slow page")
    page = c.get(run_url).text
    assert status_of(page) == "Running" and 'id="cancel" type="submit"' in page
    # A second start while it runs is rejected, and says so.
    r = c.post(sluice.url + "/sources/shop/runs", data={"csrf": token_, "type": "incremental"},
               allow_redirects=False)
    rejected = c.get(sluice.url + r.headers["Location"]).text
    assert status_of(rejected) == "Rejected - previous load still running" and 'id="retry"' not in rejected
    r = c.post(run_url + "/cancel", data={"csrf": token_}, allow_redirects=False)
    assert r.status_code == 303
    page = c.get(run_url).text
    assert status_of(page) in ("Canceling …", "Cancelled"), page
    if status_of(page) == "Canceling …":
        # The button cannot be pressed twice.
        assert '<button id="cancel" type="button" disabled>Canceling …</button>' in page
        again = c.post(run_url + "/cancel", data={"csrf": token_}, allow_redirects=False)
        assert again.status_code == 409 and "already Canceling" in again.text
    page = wait_for(lambda: (lambda p: p if status_of(p) == "Cancelled" else None)(c.get(run_url).text),
                    "Cancelled", timeout=60)
    assert 'id="cancel"' not in page and 'id="retry"' in page
    api.slow.clear()
    r = c.post(run_url + "/retry", data={"csrf": token_}, allow_redirects=False)
    assert r.status_code == 303
    retry = c.get(sluice.url + r.headers["Location"]).text
    assert f'href="{run_url.replace(sluice.url, "")}"' in retry  # "Retries run …"
    # The cancelled run is no longer the most recent: no Retry on it.
    assert 'id="retry"' not in c.get(run_url).text


def test_runs_pages_walk_every_run_once_in_every_order(sluice, api):
    """A source's runs, 50 a page, walked by the pages' Next links: every
    run exactly once, in the order asked, for each column (ties on the
    sort key broken by the run's number), on both stores."""
    org, user, token = sluice.new_org()
    api_source(sluice, org, api)
    # 137 ended runs of the source, made straight in the store: many share
    # a status, a type, a record count (ties across page boundaries).
    statuses = ["SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"]
    values = ", ".join(
        f"('{900_000 + i}', '{org}', 'shop', '{'DESTRUCTIVE' if i % 3 == 0 else 'INCREMENTAL'}', "
        f"'{statuses[i % 4]}', {('NULL' if i % 4 != 1 else repr('HTTP 500'))}, {i % 7}, {i % 5}, 1, 1, "
        f"{1_700_000_000_000_000 + i * 1_000_000}, {'NULL' if i % 11 == 0 else 1_700_000_000_000_000 + i * 1_000_000}, "
        f"{'NULL' if i % 11 == 0 else 1_700_000_000_000_000 + i * 1_000_000 + (i % 13) * 1_000_000}, "
        f"{1_700_000_000_000_000 + i * 1_000_000}, {i % 3})"
        for i in range(137))
    sluice.store_sql("INSERT INTO api_runs (id, organization_id, source_name, run_type, status, error, records, "
                     "tables, attempt, lease_token, created_at, started_at, finished_at, modified_at, messages) "
                     f"VALUES {values}")
    c = sign_in(sluice, user, token)
    h = {"Authorization": f"Bearer {sluice.jwt(org)}"}
    for sort in ("id", "status", "type", "started", "duration", "records", "tables", "messages"):
        for order in ("asc", "desc"):
            url = f"/sources/shop?sort={sort}&order={order}"
            seen, pages = [], 0
            while url:
                page = c.get(sluice.url + url).text
                seen += re.findall(r'<tr><td><a href="/runs/(\d+)">', page)
                nxt = re.search(r'rel="next" href="([^"]+)"', page)
                url = nxt.group(1).replace("&amp;", "&") if nxt else None
                pages += 1
            assert len(seen) == len(set(seen)) == 137, (sort, order, len(seen), len(set(seen)))
            assert pages == 3, (sort, order, pages)
            # The same order as the REST API's, read whole in one page.
            whole = requests.get(f"{sluice.url}/organizations/{org}/sources/shop/runs",
                                 params={"sort": sort, "order": order, "limit": 1000}, headers=h).json()
            assert [str(r["id"]) for r in whole["entries"]] == seen, (sort, order)
            assert whole["next_page_token"] is None
            keys = [sort_key(r, sort) for r in whole["entries"]]
            assert keys == sorted(keys, reverse=order == "desc"), (sort, order)
    # Filtered by type, paged: only that type, each once.
    url, seen = "/sources/shop?type=destructive", []
    while url:
        page = c.get(sluice.url + url).text
        seen += re.findall(r'<tr><td><a href="/runs/(\d+)">', page)
        nxt = re.search(r'rel="next" href="([^"]+)"', page)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
    assert sorted(seen) == sorted(str(900_000 + i) for i in range(137) if i % 3 == 0)


LABELS = {"SUCCEEDED": "Completed", "FAILED": "Failed", "CANCELLED": "Cancelled",
          "REJECTED": "Rejected - previous load still running"}


def sort_key(run, sort):
    """What a run is ordered by, from the REST shape, with its number
    breaking ties."""
    n = int(run["id"])
    value = {
        "id": n,
        "status": run.get("status_label") or LABELS.get(run["status"], run["status"]),
        "type": run["type"].lower() if isinstance(run.get("type"), str) else run["run_type"].lower(),
        "started": run["started_at"] or "",
        "duration": run.get("duration_secs") if run.get("duration_secs") is not None else -1,
        "records": run["records"],
        "tables": run["tables"],
        "messages": run["messages"],
    }[sort]
    return (value, n)
