"""How the action API's runs are executed: a killed worker's run is taken
over and writes nothing twice, a due schedule makes one run, and a
configuration's runs never exceed its max_active_runs."""
import json
import os
import signal
import subprocess
import time
from datetime import datetime


from conftest import BIN, PG_ADMIN, Sluice, fresh_postgres_database, postgres_databases, psql, wait_for, LOGS
from test_action_api import (ACCOUNT, TTT, Tailer, drop_roles, launch_curl, last_status_curl, wait_run,
                             write_config)


class Cluster:
    """`sluice serve --no-worker` and `sluice worker` processes on one
    PostgreSQL store, leases short."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.server = Sluice(tmp, fresh_postgres_database(), worker=False, env={
            "SLUICE_HEARTBEAT_MS": "300", "SLUICE_LEASE_TTL_SECS": "2", "SLUICE_POLL_MS": "50"})
        self.workers = []

    def start_worker(self):
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "w")
        LOGS.append(self.tmp / f"worker-{len(self.workers)}.log")
        proc = subprocess.Popen([BIN, "worker", *self.server.store_args()], env=self.server.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def stop(self):
        for w in self.workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        self.server.stop()

SLOW = "SELECT x FROM (SELECT 1 AS x, pg_sleep(4)) s"


def single_task(conf_id, sql_name, write="WRITE_APPEND", **extra):
    return {**TTT, "configuration_id": conf_id, "task_dependencies": ["slow_load"],
            "workflow": [{"id": "slow_load", "task_type": "sql", "sql_file": sql_name, "table_name": "t",
                          "bq_dataset": "raw", "write_disposition": write}], **extra}


def when(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_killed_workers_run_is_taken_over_and_writes_once(tmp_path):
    c = Cluster(tmp_path)
    orgs = []
    try:
        with postgres_databases("sluice_wh", 1) as (pg,):
            doomed = c.start_worker()
            t = Tailer(c.server, tmp_path, pg)
            orgs.append(t.org)
            conf = write_config(tmp_path / "k", single_task("000099_slow", "slow.sql"), {"slow.sql": SLOW})
            c.server.cli("config", "deploy", str(conf), "--org", t.org)
            code, body = launch_curl(t, "000099_slow_DEV")
            assert code == 200, body
            run_id = body["run_id"]
            db = pg.rsplit("/", 1)[1]
            # The task's statement is running in the warehouse: kill its worker then.
            wait_for(lambda: psql(PG_ADMIN, f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' "
                                            f"AND state = 'active' AND query LIKE '%pg_sleep(4)%' "
                                            f"AND query NOT LIKE '%pg_stat_activity%'") == "1",
                     "the task's SQL running", timeout=30)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait()
            c.start_worker()
            result = wait_run(t, run_id, "000099_slow_DEV")["results"][0]
            assert result["status"] == "SUCCESS", result
            status = json.loads(c.server.cli("config", "status", "000099_slow_DEV", "--org", t.org, "--json"))
            [run] = status["runs"]
            assert run["attempt"] == 2, run
            # The killed attempt's transaction rolled back: one row, one ledger entry.
            assert psql(pg, "SELECT count(*) FROM raw.t") == "1"
            assert psql(pg, f"SELECT count(*) FROM \"sluice_org_{t.org}_ledger\".sluice_action_ledger "
                            f"WHERE run_id = '{run_id}'") == "1"
            psql(PG_ADMIN, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
    finally:
        c.stop()
        drop_roles(*orgs)


def test_a_due_schedule_makes_one_run_and_moves_on(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    conf = write_config(tmp_path / "s", {**TTT, "schedule_interval": "0 7 * * *"})
    sluice.cli("config", "deploy", str(conf), "--org", t.org)
    # Not due yet (tomorrow at 7 at the latest): nothing runs.
    time.sleep(1.0)
    code, body = last_status_curl(t)
    assert code == 200 and body["results"] == [], body
    nxt = int(sluice.store_sql("SELECT next_run_at FROM action_configurations"))
    assert nxt > time.time() * 1e6
    # Made due: one run, and the next time is tomorrow's 7:00 again.
    sluice.store_sql(f"UPDATE action_configurations SET next_run_at = {int(time.time() * 1e6) - 1_000_000}")
    found = wait_for(lambda: last_status_curl(t)[1]["results"], "the scheduled run", timeout=30)
    wait_run(t, found[0]["run_id"])
    time.sleep(1.0)
    code, body = last_status_curl(t)
    assert len(body["results"]) == 1 and body["results"][0]["status"] == "SUCCESS", body
    assert int(sluice.store_sql("SELECT next_run_at FROM action_configurations")) > time.time() * 1e6
    # Deactivated: no schedule.
    code, _ = t.curl("/v1/configuration/status", json.dumps({
        "action": "set_configuration_status", "activated": False, "archived": False, "account": ACCOUNT,
        "environment": "DEV", "configuration_type": "table-to-table",
        "configuration_id": "000099_iowa_liquor_prepare_pda_DEV"}))
    assert code == 200
    assert sluice.store_sql("SELECT next_run_at FROM action_configurations") in ("", "None")


HEAVY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) "
         "SELECT count(*) AS n FROM c")


def test_runs_of_a_configuration_never_exceed_max_active_runs(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    conf = write_config(tmp_path / "m", single_task("000099_one", "heavy.sql", max_active_runs=1),
                        {"heavy.sql": HEAVY})
    sluice.cli("config", "deploy", str(conf), "--org", t.org)
    ids = []
    for _ in range(3):
        code, body = launch_curl(t, "000099_one_DEV")
        assert code == 200, body
        ids.append(body["run_id"])
    for r in ids:
        assert wait_run(t, r, "000099_one_DEV")["results"][0]["status"] == "SUCCESS"
    status = json.loads(sluice.cli("config", "status", "000099_one_DEV", "--org", t.org, "--json",
                                   "--runs", "3"))
    spans = sorted((when(r["tasks"][0]["started_at"]), when(r["tasks"][0]["finished_at"]))
                   for r in status["runs"])
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two runs overlapped: {spans}"
