"""A worker killed with SIGKILL in the middle of an API run — while an
extraction request is outstanding, and while the ingestion transaction is
open — then another server takes the run over: every record exactly
once."""
import signal
import sqlite3
import time

import requests

from conftest import Sluice, wait_for
from fake_api import FakeApi, source_file
from test_api_runs import Warehouse, auth, check_values

FAST_LEASES = {"SLUICE_LEASE_TTL_SECS": "2", "SLUICE_HEARTBEAT_MS": "300", "SLUICE_POLL_MS": "50"}


def run_of(s, org, h, rid):
    return requests.get(f"{s.url}/organizations/{org}/api-runs/{rid}", headers=h).json()


def ended(s, org, h, rid):
    return wait_for(lambda: (lambda r: r if r["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None)(
        run_of(s, org, h, rid)), f"run {rid} to end", timeout=180)


def test_killed_during_extraction_then_taken_over(tmp_path):
    api = FakeApi()
    s = Sluice(tmp_path, env=FAST_LEASES)
    try:
        org = s.new_org()[0]
        h = auth(s, org)
        wh = Warehouse("embedded", s, org)
        assert requests.post(f"{s.url}/organizations/{org}/sources", json=source_file(api.url),
                             headers=h).status_code == 201
        api.slow[("/orders", "2")] = 5
        rid = requests.post(f"{s.url}/organizations/{org}/sources/shop/runs", json={}, headers=h).json()["id"]
        # Mid-flight: the server's request for the slow page is outstanding.
        wait_for(lambda: any(q.get("page") == "2" for q in api.fetched("/orders")), "the slow page")
        before = run_of(s, org, h, rid)
        assert before["status"] == "RUNNING", before
        assert any(t["name"] == "orders" and t["status"] == "RUNNING" for t in before["tasks"]), before
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
        s.log.close()
        api.slow.clear()
        s = Sluice(tmp_path, env=FAST_LEASES)
        done = ended(s, org, h, rid)
        assert done["status"] == "SUCCEEDED" and done["attempt"] == 2, done
        check_values(api, wh)
    finally:
        s.stop()
        api.stop()


def ledger_rows(path, rid):
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM sluice_load_ledger WHERE window_start = ?",
                          (f"batch:api-run:{rid}",)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # no ledger yet: nothing was ever committed
    finally:
        db.close()


def test_killed_during_ingestion_then_taken_over(tmp_path):
    # Enough rows that the ingestion transaction stays open a while.
    api = FakeApi(customers=4000)
    s = Sluice(tmp_path, env=FAST_LEASES)
    try:
        org = s.new_org()[0]
        h = auth(s, org)
        wh = Warehouse("embedded", s, org)
        assert requests.post(f"{s.url}/organizations/{org}/sources", json=source_file(api.url),
                             headers=h).status_code == 201
        meta = s.data_dir / "sluice.db"
        warehouse = s.data_dir / "warehouse" / "actions" / org / "shop.db"
        caught = None
        for attempt in range(6):
            rid = requests.post(f"{s.url}/organizations/{org}/sources/shop/runs", json={},
                                headers=h).json()["id"]

            def ingesting():
                db = sqlite3.connect(meta, timeout=30)
                try:
                    return db.execute("SELECT count(*) FROM api_tasks WHERE run_id = ? AND kind = 'ingestion' "
                                      "AND status = 'RUNNING'", (str(rid),)).fetchone()[0] > 0
                finally:
                    db.close()
            deadline = time.time() + 120
            while time.time() < deadline and not ingesting():
                time.sleep(0.002)
            # Stopped, the server can neither commit nor record the commit:
            # no ledger row of this run proves its transaction is open.
            s.proc.send_signal(signal.SIGSTOP)
            if ingesting() and ledger_rows(warehouse, rid) == 0:
                caught = rid
                s.proc.send_signal(signal.SIGKILL)
                s.proc.wait()
                s.log.close()
                break
            s.proc.send_signal(signal.SIGCONT)
            assert ended(s, org, h, rid)["status"] == "SUCCEEDED"
        assert caught is not None, "no kill landed while the ingestion transaction was open"
        print(f"killed mid-ingestion on try {attempt + 1}")
        fetched = len(api.requests)
        s = Sluice(tmp_path, env=FAST_LEASES)
        done = ended(s, org, h, caught)
        assert done["status"] == "SUCCEEDED" and done["attempt"] == 2, done
        # It went on from the stage: the pages were not fetched again.
        assert len(api.requests) == fetched
        assert all(t["status"] == "SUCCEEDED" for t in done["tasks"]), done["tasks"]
        assert ledger_rows(warehouse, caught) == 9
        # Merged tables hold each record once; appended ones (events,
        # every run adds its records) hold one copy per run that loaded.
        runs = 1 + sum(1 for r in requests.get(f"{s.url}/organizations/{org}/sources/shop/runs",
                                               headers=h).json()["entries"]
                       if r["status"] == "SUCCEEDED" and r["id"] != caught)
        assert wh.count("events") == runs * len(api.events)
        assert len({r[0] for r in wh.rows("SELECT id FROM customers")}) == wh.count("customers") == 4000
    finally:
        s.stop()
        api.stop()
