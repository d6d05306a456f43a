"""Stopping sluice: SIGTERM lets a run under way finish within the grace
period and the process exits 0; a run that outlives the grace period is
handed back (its attempt says HANDED_BACK, never LOST) and the next server
runs it at once, not after its lease expires; the HTTP listener closes."""
import signal
import time

import pytest
import requests

from conftest import Sluice, deployment_of, fresh_postgres_database, wait_for

SLOW = '''
import os, time

def handler(request, context):
    print("started", flush=True)
    time.sleep(float(os.environ["SLEEP"]))
    print("finished", flush=True)
    return {"ok": True}
'''


def deployment(s, sleep):
    session, dep_url, ver = deployment_of(s, SLOW, "slow")
    run = session.post(f"{dep_url}/runs", json={"version_id": ver,
                                                 "environment": {"SLEEP": str(sleep)}}).json()["run_id"]
    return session, f"{dep_url}/runs/{run}"


def running(session, run_url):
    return session.get(run_url, timeout=10).json()["status"] == "RUNNING"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigterm_lets_a_run_finish_then_exits_zero(backend, tmp_path):
    url = fresh_postgres_database() if backend == "postgres" else None
    s = Sluice(tmp_path, url, env={"SLUICE_SHUTDOWN_GRACE_SECS": "60", "SLUICE_LOG": "info"})
    try:
        session, run_url = deployment(s, sleep=3)
        wait_for(lambda: running(session, run_url), "the run to start")
        s.proc.send_signal(signal.SIGTERM)
        # The listener closes at once; the process waits for the run.
        wait_for(lambda: not reachable(s.url), "the listener to close", timeout=10)
        assert s.proc.poll() is None, "the process did not wait for the run under way"
        assert s.proc.wait(30) == 0
    finally:
        s.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "shutting down" in log and "sluice stopped" in log, log
    s2 = Sluice(tmp_path, url, env={"SLUICE_SHUTDOWN_GRACE_SECS": "60"}, worker=False)
    try:
        run = session.get(rebase(run_url, s2.url), timeout=10).json()
        assert run["status"] == "SUCCEEDED", run
        attempts = session.get(rebase(run_url, s2.url) + "/attempts", timeout=10).json()["entries"]
        assert [a["outcome"] for a in attempts] == ["SUCCEEDED"], attempts
    finally:
        s2.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_run_outliving_the_grace_period_is_handed_back_and_taken_at_once(backend, tmp_path):
    url = fresh_postgres_database() if backend == "postgres" else None
    # A lease that would take a minute to expire: the next server takes the
    # run at once only because it was handed back.
    env = {"SLUICE_SHUTDOWN_GRACE_SECS": "1", "SLUICE_LEASE_TTL_SECS": "60", "SLUICE_LOG": "info"}
    s = Sluice(tmp_path, url, env=env)
    try:
        session, run_url = deployment(s, sleep=4)
        wait_for(lambda: running(session, run_url), "the run to start")
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
    finally:
        s.stop()
    s2 = Sluice(tmp_path, url, env=env)
    try:
        url2 = rebase(run_url, s2.url)
        attempts = session.get(url2 + "/attempts", timeout=10).json()["entries"]
        assert attempts[0]["outcome"] == "HANDED_BACK", attempts
        assert "shut down" in attempts[0]["error"], attempts
        t0 = time.time()
        wait_for(lambda: session.get(url2, timeout=10).json()["status"] == "SUCCEEDED",
                 "the handed-back run to succeed", timeout=40)
        assert time.time() - t0 < 30, "the run waited for its old lease to expire"
        attempts = session.get(url2 + "/attempts", timeout=10).json()["entries"]
        assert [a["outcome"] for a in attempts] == ["HANDED_BACK", "SUCCEEDED"], attempts
        assert "LOST" not in {a["outcome"] for a in attempts}
        logs = session.get(url2 + "/logs", timeout=10).json()["events"]
        assert sum(1 for e in logs if e["message"] == "finished") == 1, logs
    finally:
        s2.stop()


def rebase(run_url, base):
    """The same run's address on another server."""
    return base + "/organizations/" + run_url.split("/organizations/", 1)[1]


def reachable(url):
    try:
        requests.get(url + "/healthz", timeout=1)
        return True
    except requests.ConnectionError:
        return False


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_import_query_outliving_the_grace_period_is_handed_back_and_loads_once(backend, tmp_path):
    """A table import query still loading when the grace period ends — in
    its COMMIT, which cannot be cut short from the client — has its
    destination session ended (the COMMIT never lands, even after the
    process is gone), is handed back — RUNNABLE at once, its lease let go —
    and the next server runs it at once, not after the lease's minute:
    every row in the destination exactly once."""
    from conftest import postgres_databases, psql
    from preds import SOURCE, add_rows, fingerprint, job_toml
    url = fresh_postgres_database() if backend == "postgres" else None
    env = {"SLUICE_SHUTDOWN_GRACE_SECS": "1", "SLUICE_LEASE_TTL_SECS": "60", "SLUICE_LOG": "info",
           "SLUICE_POLL_MS": "100"}
    with postgres_databases("sluice_handback") as (src, dst):
        psql(src, SOURCE)
        add_rows(src, 1, 1_000)
        s = Sluice(tmp_path, url, env=env)
        try:
            org = s.new_org()[0]
            job = s.cli_json("job", "create", "--org", org, "--file",
                             str(job_toml(tmp_path / "job.toml", src, dst)))["job"]["id"]
            wait_for(lambda: [q for q in s.cli_json("job", "queries", job, "--org", org)
                              if q["status"] == "SUCCEEDED"], "the first query")
            # A warehouse whose commit takes seconds (a deferred check on
            # every row), so the next load outlives the grace period.
            psql(dst, """CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN PERFORM pg_sleep(0.0001); RETURN NULL; END $$;
                CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON preds DEFERRABLE INITIALLY DEFERRED
                FOR EACH ROW EXECUTE FUNCTION slow_check()""")
            add_rows(src, 1_001, 9_000)
            query = s.cli_json("job", "run", job, "--org", org, "--detach")["id"]
            wait_for(lambda: s.store_sql(f"SELECT status FROM import_queries WHERE id = '{query}'")
                     == "RUNNING", "the query to run", interval=0.05)
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(30) == 0
        finally:
            s.stop()
        assert s.store_sql(f"SELECT status, lease_expires_at IS NULL, error IS NULL FROM import_queries "
                           f"WHERE id = '{query}'") in ("RUNNABLE|1|1", "RUNNABLE|t|t"), "not handed back"
        # The load was cut short in its COMMIT (8,000 deferred checks of a
        # millisecond each): its session was ended, so the COMMIT never
        # lands, not even after the process is gone.
        time.sleep(10)
        assert psql(dst, "SELECT count(*) FROM preds") == "1000", "the stopped load committed rows"
        log = (tmp_path / "serve.log").read_text()
        assert "work handed back" in log and f"id={query}" in log, log[-2000:]
        s2 = Sluice(tmp_path, url, env=env)
        try:
            t0 = time.time()
            done = wait_for(lambda: [q for q in s2.cli_json("job", "queries", job, "--org", org)
                                     if q["id"] == query and q["status"] == "SUCCEEDED"],
                            "the handed-back query to succeed", timeout=120)
            assert time.time() - t0 < 60, "the query waited for its old lease to expire"
            assert done[0]["records"] == 8_000, done
        finally:
            s2.stop()
        assert fingerprint(dst, "preds") == fingerprint(src, "preds")
        # Two windows loaded, each once: the first query's and this one's.
        assert psql(dst, f"SELECT count(*) || ':' || sum(rows) FROM sluice_load_ledger "
                         f"WHERE job = '{job}'") == "2:9000"
