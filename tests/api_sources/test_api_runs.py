"""HTTP API sources against a real HTTP API on loopback (fake_api.py):
every record lands once with its values, on SQLite and PostgreSQL metadata
and into both warehouses; incremental runs fetch after the cursor and
destructive runs replace; one active run per source, cancel, retry and
search as the API Run page has them."""
import json
import sqlite3
import subprocess

import pytest
import requests

from conftest import BIN, Sluice, fresh_postgres_database, psql, wait_for
from fake_api import TOKEN, source_file


def auth(s, org):
    return {"Authorization": f"Bearer {s.jwt(org)}"}


class Warehouse:
    """Where a source's tables land: the embedded warehouse (the default)
    or a PostgreSQL warehouse declared with `sluice warehouse add`."""

    def __init__(self, kind, s, org):
        self.kind, self.s, self.org = kind, s, org
        self.url = None
        if kind == "postgres":
            self.url = fresh_postgres_database()
            s.cli("warehouse", "add", "wh", self.url, "--org", org)

    def destination(self):
        return "wh" if self.kind == "postgres" else None

    def rows(self, sql):
        """Rows of a query on dataset `shop` (tables named bare)."""
        if self.kind == "postgres":
            out = psql(self.url, f"SET search_path TO shop; {sql}")
            return [tuple(line.split("|")) for line in out.splitlines() if line]
        db = sqlite3.connect(self.s.data_dir / "warehouse" / "actions" / self.org / "shop.db")
        try:
            return [tuple("" if v is None else str(v) for v in r) for r in db.execute(sql).fetchall()]
        finally:
            db.close()

    def count(self, table):
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])


def boolean(v):
    return {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}[v]


def check_values(api, wh):
    """Every record of the API, field by field, and each exactly once."""
    got = {int(r[0]): r[1:] for r in wh.rows(
        "SELECT id, name, address__city, address__zip, score, active, _sluice_id FROM customers")}
    assert wh.count("customers") == len(got) == len(api.customers)
    ids = {}
    for c in api.customers:
        name, city, zip_, score, active, sid = got[c["id"]]
        assert (name, city, zip_, score) == (c["name"], c["address"]["city"], c["address"]["zip"],
                                             str(c["score"])), c
        assert boolean(active) == c["active"], c
        ids[sid] = c
    tags = wh.rows("SELECT _sluice_parent_id, _sluice_list_idx, value FROM customers__tags")
    assert len(tags) == 2 * len(api.customers)
    for parent, idx, value in tags:
        assert ids[parent]["tags"][int(idx)] == value
    orders = {r[0]: int(r[1]) for r in wh.rows("SELECT _sluice_id, id FROM orders")}
    assert sorted(orders.values()) == [o["id"] for o in api.orders]
    by_id = {o["id"]: o for o in api.orders}
    lines = wh.rows("SELECT _sluice_parent_id, _sluice_list_idx, sku, qty FROM orders__lines")
    assert len(lines) == sum(len(o["lines"]) for o in api.orders)
    for parent, idx, sku, qty in lines:
        want = by_id[orders[parent]]["lines"][int(idx)]
        assert (sku, int(qty)) == (want["sku"], want["qty"])
    assert sorted(r[0] for r in wh.rows("SELECT uuid FROM events")) == sorted(e["uuid"] for e in api.events)
    assert wh.count("surveys") == len(api.surveys)
    assert wh.count("surveys__questions") == 2 * len(api.surveys)
    assert wh.count("surveys__questions__options") == 4 * len(api.surveys)
    resp = wh.rows("SELECT rid, answer, _surveys_title FROM responses")
    want = sorted((f"{s['id']}-{k}", f"A{k}", s["title"]) for s in api.surveys for k in range(s["id"] % 3))
    assert sorted(resp) == want


@pytest.mark.parametrize("warehouse", ["embedded", "postgres"])
def test_every_record_lands_once_with_its_values_through_the_rest_api(sluice, api, warehouse):
    org = sluice.new_org()[0]
    h = auth(sluice, org)
    wh = Warehouse(warehouse, sluice, org)
    # Faults: a 429 with Retry-After, a 500, a slow page.
    api.faults[("/events", "2")] = [429]
    api.faults[("/events", "3")] = [500, 503]
    api.slow[("/surveys", "20")] = 1.5
    doc = source_file(api.url, destination=wh.destination())
    res = requests.post(f"{sluice.url}/organizations/{org}/sources", json=doc, headers=h)
    assert res.status_code == 201, res.text
    shown = requests.get(f"{sluice.url}/organizations/{org}/sources/shop", headers=h).json()
    assert TOKEN not in json.dumps(shown) and shown["config"]["client"]["auth"]["token"] == "********"
    # The token is sealed at rest too.
    assert TOKEN not in sluice.store_sql("SELECT config_sealed FROM api_sources")

    res = requests.post(f"{sluice.url}/organizations/{org}/sources/shop/runs", json={}, headers=h)
    assert res.status_code == 201, res.text
    run = res.json()
    assert run["status_label"] == "Waiting to start" or run["status"] in ("STARTING", "RUNNING"), run
    done = wait_for(lambda: (lambda r: r if r["status"] in ("SUCCEEDED", "FAILED") else None)(
        requests.get(f"{sluice.url}/organizations/{org}/api-runs/{run['id']}", headers=h).json()),
        "the run to end", timeout=120)
    assert done["status"] == "SUCCEEDED" and done["status_label"] == "Completed", done
    kinds = [t["kind"] for t in done["tasks"]]
    assert kinds.count("extraction") == 5 and kinds[-1] == "complete_ingestion", kinds
    assert {t["table"] for t in done["tasks"] if t["kind"] == "ingestion"} == {
        "customers", "customers__tags", "orders", "orders__lines", "events", "surveys",
        "surveys__questions", "surveys__questions__options", "responses"}
    assert all(t["status_label"] == "Completed" for t in done["tasks"]), done["tasks"]
    messages = " ".join(m["message"] for m in done["message_list"])
    assert "HTTP 429" in messages and "Retry-After" in messages and "HTTP 500" in messages \
        and "HTTP 503" in messages, messages
    assert "column score widened from bigint to text" in messages, messages
    assert done["data_load"]["tables"] == 9, done
    customers = next(t for t in done["table_list"] if t["name"] == "customers")
    assert customers["records"] == 120
    assert {"name": "address__zip", "type": "text"} in customers["columns"], customers
    check_values(api, wh)
    # The 429 was honoured: the retry came at least a second later.
    assert sum(1 for q in api.fetched("/events") if q.get("page") == "2") == 2
    # Every page of a paginated endpoint was fetched once (the faults aside).
    assert [q.get("cursor") for q in api.fetched("/customers")] == [None, "50", "100"]
    assert [q.get("page") for q in api.fetched("/orders")] == ["1", "2", "3"]
    assert [q.get("offset") for q in api.fetched("/surveys")] == ["0", "20", "40"]


def cli_json(s, *args, check=True):
    out = subprocess.run([BIN, *args, "--json", *s.store_args()], env=s.env, capture_output=True,
                         text=True)
    if check:
        assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None, out


def test_incremental_fetches_after_the_cursor_and_destructive_replaces(tmp_path, api):
    s = Sluice(tmp_path, worker=False)
    try:
        org = s.new_org()[0]
        wh = Warehouse("embedded", s, org)
        path = tmp_path / "shop.json"
        path.write_text(json.dumps(source_file(api.url)))
        made, _ = cli_json(s, "source", "create", "--file", str(path), "--org", org)
        assert made["name"] == "shop" and made["destination"] == "embedded"
        first, _ = cli_json(s, "source", "run", "shop", "--org", org)
        assert first["status"] == "SUCCEEDED", first
        check_values(api, wh)
        last = max(c["updatedAt"] for c in api.customers)
        # New customers arrive; the next incremental run asks for those
        # after the cursor only, and merges them.
        api.add_customers(121, 180)
        api.requests.clear()
        second, _ = cli_json(s, "source", "run", "shop", "--org", org)
        assert second["status"] == "SUCCEEDED", second
        assert api.fetched("/customers")[0]["since"] == last
        fetched = next(t for t in second["tasks"] if t["name"] == "customers")
        assert fetched["records"] == 60, fetched
        assert wh.count("customers") == 180
        assert len({r[0] for r in wh.rows("SELECT id FROM customers")}) == 180
        # events appends (no cursor): its records twice; a destructive run
        # replaces every table.
        assert wh.count("events") == 2 * len(api.events)
        third, _ = cli_json(s, "source", "run", "shop", "--org", org, "--destructive")
        assert third["status"] == "SUCCEEDED" and third["type"] == "DESTRUCTIVE", third
        assert api.fetched("/customers")[-1].get("since") != last
        check_values(api, wh)
        # The runs page: filtered by type, sorted, with typical durations.
        runs, _ = cli_json(s, "source", "runs", "shop", "--org", org, "--type", "destructive")
        assert [r["id"] for r in runs] == [third["id"]]
        runs, _ = cli_json(s, "source", "runs", "shop", "--org", org, "--sort", "records", "--asc")
        assert [r["records"] for r in runs] == sorted(r["records"] for r in runs) and len(runs) == 3
        durations, _ = cli_json(s, "source", "durations", "shop", "--org", org)
        inc = next(d for d in durations if d["run_type"] == "INCREMENTAL")
        assert inc["runs"] == 2 and inc["p50_secs"] is not None and inc["p95_secs"] >= inc["p50_secs"]
        # Search, as the page lists it.
        rid = str(third["id"])
        found = lambda text: [t["name"] for t in cli_json(s, "source", "search", rid, text, "--org", org)[0]]
        assert set(found("mc")) == {"metadata_consolidation"}
        assert set(found("ci")) == {"complete_ingestion"}
        assert set(found("CONSOL")) == {"metadata_consolidation", "table_consolidation"}
        assert len(found("compl")) == len(third["tasks"])  # every status starts with Completed
        assert set(found("questions")) == {"metadata_consolidation", "table_consolidation", "ingestion"}
        assert found("no such thing") == []
        # Bad input says what is wrong.
        _, out = cli_json(s, "source", "runs", "shop", "--org", org, "--sort", "colour", check=False)
        assert out.returncode != 0 and "sort `colour`" in out.stderr
        _, out = cli_json(s, "source", "run-show", "nope", "--org", org, check=False)
        assert out.returncode != 0 and "not found" in out.stderr
    finally:
        s.stop()


def test_a_bad_source_file_is_refused_naming_every_problem(tmp_path):
    s = Sluice(tmp_path, worker=False)
    try:
        org = s.new_org()[0]
        path = tmp_path / "bad.toml"
        path.write_text('name = "shop"\n[client]\nbase_url = "http://127.0.0.1:1"\nsession = "x"\n'
                        '[[resources]]\nname = "orders"\nwrite_disposition = "merge"\n'
                        '[resources.endpoint]\npath = "orders"\nresponse_actions = []\n')
        _, out = cli_json(s, "source", "create", "--file", str(path), "--org", org, check=False)
        assert out.returncode != 0
        for p in ("client.session: `session` is not supported",
                  "resources[0].endpoint.response_actions: `response_actions` is not supported",
                  "resources[0].primary_key: a merge needs a primary_key"):
            assert p in out.stderr, out.stderr
        listed, _ = cli_json(s, "source", "list", "--org", org)
        assert listed == []
        # A TOML file that is right is taken.
        path.write_text('name = "shop"\n[client]\nbase_url = "http://127.0.0.1:1"\n'
                        '[[resources]]\nname = "orders"\n')
        made, _ = cli_json(s, "source", "create", "--file", str(path), "--org", org)
        assert made["name"] == "shop"
        listed, _ = cli_json(s, "source", "list", "--org", org)
        assert [(x["name"], x["kind"]) for x in listed] == [("shop", "api")]
    finally:
        s.stop()


def test_one_active_run_per_source_when_two_processes_start_runs_at_once(tmp_path):
    db = fresh_postgres_database()
    s = Sluice(tmp_path, db, worker=False)
    try:
        org = s.new_org()[0]
        path = tmp_path / "shop.json"
        path.write_text(json.dumps({"name": "shop", "client": {"base_url": "http://127.0.0.1:9"},
                                    "resources": ["orders"]}))
        cli_json(s, "source", "create", "--file", str(path), "--org", org)
        for round_ in range(5):
            procs = [subprocess.Popen([BIN, "source", "run", "shop", "--org", org, "--detach", "--json",
                                       *s.store_args()], env=s.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(2)]
            outs = [p.communicate(timeout=60) for p in procs]
            runs = [json.loads(o) for o, _ in outs]
            statuses = sorted(r["status"] for r in runs)
            assert statuses == ["REJECTED", "RUNNABLE"], (round_, runs)
            rejected = next(r for r in runs if r["status"] == "REJECTED")
            assert rejected["status_label"] == rejected["error"] == "Rejected - previous load still running"
            assert sorted(p.returncode for p in procs) == [0, 1]
            active = next(r for r in runs if r["status"] == "RUNNABLE")
            cancelled, _ = cli_json(s, "source", "cancel", str(active["id"]), "--org", org)
            assert cancelled["status"] == "CANCELLED"
        # Ten runs made, five rejected; none twice active.
        runs, _ = cli_json(s, "source", "runs", "shop", "--org", org)
        assert sorted(r["status"] for r in runs) == ["CANCELLED"] * 5 + ["REJECTED"] * 5
    finally:
        s.stop()


def test_cancel_twice_keeps_live_tables_and_retry_follows_the_rules(sluice, api):
    org = sluice.new_org()[0]
    h = auth(sluice, org)
    wh = Warehouse("embedded", sluice, org)
    base = f"{sluice.url}/organizations/{org}"
    assert requests.post(f"{base}/sources", json=source_file(api.url), headers=h).status_code == 201

    def run_of(rid):
        return requests.get(f"{base}/api-runs/{rid}", headers=h).json()

    def ended(rid):
        return wait_for(lambda: (lambda r: r if r["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")
                                 else None)(run_of(rid)), f"run {rid} to end", timeout=120)

    first = requests.post(f"{base}/sources/shop/runs", json={}, headers=h).json()
    assert ended(first["id"])["status"] == "SUCCEEDED"
    live = {t: wh.count(t) for t in ("customers", "orders", "events", "responses")}
    # A run held on a slow page: cancelled twice.
    api.slow[("/orders", "2")] = 4
    api.requests.clear()
    second = requests.post(f"{base}/sources/shop/runs", json={"type": "destructive"}, headers=h).json()
    wait_for(lambda: any(q.get("page") == "2" for q in api.fetched("/orders")), "the slow page")
    # While it runs: a third start is rejected, and search finds the
    # tasks waiting to start.
    third = requests.post(f"{base}/sources/shop/runs", json={}, headers=h)
    assert third.status_code == 201 and third.json()["status_label"] == "Rejected - previous load still running"
    waiting = requests.get(f"{base}/api-runs/{second['id']}/search", params={"q": "Waiting"}, headers=h).json()
    assert {t["name"] for t in waiting["entries"]} >= {"events", "surveys", "complete_ingestion"}, waiting
    res = requests.post(f"{base}/api-runs/{second['id']}/cancel", json={}, headers=h)
    assert res.status_code == 200 and res.json()["status_label"] == "Canceling …", res.text
    again = requests.post(f"{base}/api-runs/{second['id']}/cancel", json={}, headers=h)
    assert again.status_code == 409 and "already Canceling" in again.json()["error_description"], again.text
    assert ended(second["id"])["status"] == "CANCELLED"
    assert {t: wh.count(t) for t in live} == live, "a cancelled run changed a live table"
    assert run_of(second["id"])["data_load"] is None
    # Retry: not a completed run, not one that is not the most recent.
    res = requests.post(f"{base}/api-runs/{first['id']}/retry", json={}, headers=h)
    assert res.status_code == 409 and "only the most recent run" in res.json()["error_description"], res.text
    api.slow.clear()
    retry = requests.post(f"{base}/api-runs/{second['id']}/retry", json={}, headers=h)
    assert retry.status_code == 201, retry.text
    assert retry.json()["retry_of"] == second["id"] and retry.json()["type"] == "DESTRUCTIVE"
    assert ended(retry.json()["id"])["status"] == "SUCCEEDED"
    res = requests.post(f"{base}/api-runs/{retry.json()['id']}/retry", json={}, headers=h)
    assert res.status_code == 409 and "only a Failed or Cancelled run" in res.json()["error_description"]
    check_values(api, wh)


@pytest.mark.parametrize("auth_config", [
    {"type": "http_basic", "username": "user", "password": "pass"},
    {"type": "api_key", "name": "key", "api_key": "KEY", "location": "query"},
    {"type": "oauth2_client_credentials", "access_token_url": "{api}/token", "client_id": "cid",
     "client_secret": "csecret", "access_token_request_data": {"scope": "read"}},
], ids=["http_basic", "api_key_in_query", "oauth2_client_credentials"])
def test_each_auth_reaches_the_api(tmp_path, api, auth_config):
    s = Sluice(tmp_path, worker=False)
    try:
        org = s.new_org()[0]
        wh = Warehouse("embedded", s, org)
        doc = {"name": "shop", "client": {"base_url": api.url,
                                          "auth": json.loads(json.dumps(auth_config).replace("{api}", api.url))},
               "resources": [{"name": "orders", "endpoint": {
                   "path": "orders", "data_selector": "items",
                   "paginator": {"type": "page_number", "base_page": 1, "total_path": "total_pages"}}}]}
        path = tmp_path / "shop.json"
        path.write_text(json.dumps(doc))
        cli_json(s, "source", "create", "--file", str(path), "--org", org)
        shown, _ = cli_json(s, "source", "show", "shop", "--org", org)
        for secret in ("pass", "KEY", "csecret"):
            assert f'"{secret}"' not in json.dumps(shown), shown
        run, _ = cli_json(s, "source", "run", "shop", "--org", org)
        assert run["status"] == "SUCCEEDED", run
        assert wh.count("orders") == len(api.orders)
        if auth_config["type"] == "oauth2_client_credentials":
            # One token for the whole run.
            assert len(api.fetched("/token")) == 1
    finally:
        s.stop()


def test_a_run_that_cannot_reach_its_api_fails_and_says_why(tmp_path, api):
    s = Sluice(tmp_path, worker=False)
    try:
        org = s.new_org()[0]
        doc = source_file(api.url)
        doc["client"]["auth"]["token"] = "wrong"
        path = tmp_path / "shop.json"
        path.write_text(json.dumps(doc))
        cli_json(s, "source", "create", "--file", str(path), "--org", org)
        run, out = cli_json(s, "source", "run", "shop", "--org", org, check=False)
        assert out.returncode == 1 and run["status"] == "FAILED", run
        task = next(t for t in run["tasks"] if t["name"] == "customers")
        assert task["status"] == "FAILED" and any("HTTP 401" in m for m in task["messages"]), task
        assert run["data_load"] is None
        # Nothing was made in the warehouse.
        db = s.data_dir / "warehouse" / "actions" / org / "shop.db"
        assert not db.exists() or sqlite3.connect(db).execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'customers'").fetchone()[0] == 0
        # The failed run may be retried (and fails again the same way).
        retried, out = cli_json(s, "source", "retry", str(run["id"]), "--org", org, check=False)
        assert retried["retry_of"] == run["id"] and retried["status"] == "FAILED", retried
    finally:
        s.stop()
