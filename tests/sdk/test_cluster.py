"""A PostgreSQL-backed cluster: `sluice serve --no-worker` plus separate
`sluice worker` processes sharing one store and one data dir."""
import collections
import datetime
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import BIN, Sluice, code_archive, fresh_postgres_database, wait_for, LOGS

# Every execution of the handler reports one line to the test's ledger (an
# HTTP server in this process: user code is sandboxed to its own folder, and
# the network is how it reaches out), so the test sees how often each run's
# code really ran, whatever the store recorded.
LEDGER_HANDLER = '''
import os
import time
import urllib.request

def handler(request, context):
    line = "%s %d %d" % (context.run_id, context.attempt, os.getpid())
    urllib.request.urlopen(os.environ["LEDGER"], data=line.encode(), timeout=30).read()
    time.sleep(float(os.environ.get("SLEEP", "0")))
'''


class Ledger:
    """What the handlers reported, each line as it arrived."""

    def __init__(self):
        import http.server
        import threading
        self.lines, lock = [], threading.Lock()
        ledger = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with lock:
                    ledger.lines.append(body.split())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

FAST = {"SLUICE_HEARTBEAT_MS": "300", "SLUICE_LEASE_TTL_SECS": "2", "SLUICE_RETRY_BASE_MS": "100",
        "SLUICE_POLL_MS": "50"}


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.server = Sluice(tmp, fresh_postgres_database(), env=FAST, worker=False)
        self.workers = []

    def start_worker(self, slots=4):
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "w")
        LOGS.append(self.tmp / f"worker-{len(self.workers)}.log")
        proc = subprocess.Popen([BIN, "worker", "--worker-slots", str(slots), *self.server.store_args()],
                                env=self.server.env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def stop(self):
        for w in self.workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        self.server.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def setup_deployment(s, sleep):
    org, user, token = s.new_org()
    session = requests.Session()
    session.auth = (f"user-{user}", token)
    base = f"{s.url}/organizations/{org}/deployments"
    dep = session.post(base, json={"name": "ledger"}).json()["deployment_id"]
    ver = session.post(f"{base}/{dep}/versions",
                       json={"version": "1", "handler": "main:handler", "image": "python"}).json()
    assert requests.put(ver["upload_url"], data=code_archive({"main.py": LEDGER_HANDLER})).status_code == 200
    return session, f"{base}/{dep}", ver["version_id"]


def ledger_lines(ledger):
    return list(ledger.lines)


# Enough runs that four workers claim against each other all the time (the
# engine benchmark bursts thousands); few enough for the test suite's time.
RUNS = 400


def test_four_workers_run_hundreds_of_runs_each_exactly_once(cluster, tmp_path):
    for _ in range(4):
        cluster.start_worker(slots=4)
    ledger = Ledger()
    session, dep_url, ver = setup_deployment(cluster.server, sleep=0)
    env = {"LEDGER": ledger.url}

    def submit(_):
        r = session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": env, "retry_count": 2})
        assert r.status_code == 200, r.text
        return r.json()["run_id"]

    with ThreadPoolExecutor(8) as pool:
        run_ids = list(pool.map(submit, range(RUNS)))
    assert len(set(run_ids)) == RUNS

    def all_done():
        done = 0
        token = None
        while True:
            page = session.get(f"{dep_url}/runs", params={"next_page_token": token} if token else {}).json()
            done += sum(1 for r in page["entries"] if r["status"] == "SUCCEEDED")
            failed = [r for r in page["entries"] if r["status"] == "FAILED"]
            assert not failed, failed[0]
            token = page["next_page_token"]
            if not token:
                return done == RUNS or None

    wait_for(all_done, f"{RUNS} runs to succeed", timeout=600, interval=1)

    lines = ledger_lines(ledger)
    executions = collections.Counter(line[0] for line in lines)
    assert set(executions) == set(run_ids)
    # What the handlers recorded decides: a run may run again only after an
    # attempt that ended LOST or FAILED, so it ran at most once more than
    # those; and no attempt number ran twice (a double claim would).
    assert len({(l[0], l[1]) for l in lines}) == len(lines), "an attempt ran twice"
    for run_id, n in executions.items():
        if n == 1:
            continue
        attempts = session.get(f"{dep_url}/runs/{run_id}/attempts").json()["entries"]
        ended_badly = sum(1 for a in attempts if a["outcome"] in ("LOST", "FAILED"))
        assert n <= 1 + ended_badly, (run_id, n, attempts)
    workers = collections.Counter()
    for run_id in run_ids[:100]:
        for a in session.get(f"{dep_url}/runs/{run_id}/attempts").json()["entries"]:
            workers[a["worker"]] += 1
    assert len(workers) >= 2, f"work went to one worker only: {workers}"


def test_a_run_survives_kill_9_of_its_worker(cluster, tmp_path):
    doomed = cluster.start_worker(slots=2)
    ledger = Ledger()
    session, dep_url, ver = setup_deployment(cluster.server, sleep=4)
    run = session.post(f"{dep_url}/runs", json={
        "version_id": ver, "retry_count": 3, "environment": {"LEDGER": ledger.url, "SLEEP": "4"},
    }).json()
    run_id = run["run_id"]

    wait_for(lambda: ledger_lines(ledger), "the first attempt to start", timeout=30)
    assert session.get(f"{dep_url}/runs/{run_id}").json()["status"] == "RUNNING"
    first_pid = int(ledger_lines(ledger)[0][2])
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    # The handler's process dies with its worker: no orphan finishes the run.
    wait_for(lambda: not os.path.exists(f"/proc/{first_pid}") or None, "the orphan to die", timeout=10)

    cluster.start_worker(slots=2)
    done = wait_for(lambda: (lambda r: r if r["status"] in ("SUCCEEDED", "FAILED") else None)(
        session.get(f"{dep_url}/runs/{run_id}").json()), "the run to finish elsewhere", timeout=60)
    assert done["status"] == "SUCCEEDED", done

    attempts = session.get(f"{dep_url}/runs/{run_id}/attempts").json()["entries"]
    assert [a["outcome"] for a in attempts] == ["LOST", "SUCCEEDED"], attempts
    assert attempts[0]["worker"] != attempts[1]["worker"]
    assert "stopped renewing its lease" in attempts[0]["error"]
    assert [int(l[1]) for l in ledger_lines(ledger)] == [1, 2]


def test_the_store_unreachable_for_a_while_then_every_run_ends_once(cluster, tmp_path):
    """PostgreSQL refuses every connection for 15 s (the open ones cut)
    under a `serve` and two `worker`s with runs in flight: no process
    dies, each reconnects, and every run ends once, SUCCEEDED, its code run
    at most once per attempt."""
    from conftest import PG_ADMIN, psql
    workers = [cluster.start_worker(slots=4) for _ in range(2)]
    ledger = Ledger()
    session, dep_url, ver = setup_deployment(cluster.server, sleep=0)
    env = {"LEDGER": ledger.url, "SLEEP": "1"}
    run_ids = [session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": env,
                                                      "retry_count": 5}).json()["run_id"] for _ in range(24)]
    wait_for(lambda: len(ledger_lines(ledger)) >= 4, "runs in flight")
    name = cluster.server.database_url.rsplit("/", 1)[1]
    try:
        psql(PG_ADMIN, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        psql(PG_ADMIN, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        time.sleep(15)
        assert cluster.server.proc.poll() is None and all(w.poll() is None for w in workers), \
            "a process died while the store was away"
    finally:
        psql(PG_ADMIN, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

    def ended():
        statuses = [session.get(f"{dep_url}/runs/{r}").json()["status"] for r in run_ids]
        assert "FAILED" not in statuses, statuses
        return all(s == "SUCCEEDED" for s in statuses)

    wait_for(ended, "every run to succeed once the store is back", timeout=180, interval=1)
    assert cluster.server.proc.poll() is None and all(w.poll() is None for w in workers)
    executions = collections.Counter(line[0] for line in ledger_lines(ledger))
    for r in run_ids:
        attempts = session.get(f"{dep_url}/runs/{r}/attempts").json()["entries"]
        assert sum(1 for a in attempts if a["outcome"] == "SUCCEEDED") == 1, attempts
        assert 1 <= executions[r] <= len(attempts), (r, executions[r], attempts)
    # The outage was logged, not once per poll (50 ms here): each loop
    # waits longer after each failing turn.
    log = "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
    assert 0 < log.count("scheduling failed") < 40, log.count("scheduling failed")


def restart_postgresql(down_for):
    """Stops the whole PostgreSQL server (every connection cut, new ones
    refused), waits, starts it again, and waits until it answers."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "fast"],
                   check=True, capture_output=True)
    try:
        time.sleep(down_for)
    finally:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       check=True, capture_output=True)
    from conftest import PG_ADMIN, psql
    wait_for(lambda: subprocess.run(["psql", PG_ADMIN, "-qAtc", "SELECT 1"], capture_output=True)
             .returncode == 0, "PostgreSQL to answer again", timeout=60, interval=0.5)
    return psql


def test_postgresql_restarted_under_runs_and_an_import_query_then_each_ends_once(cluster, tmp_path):
    """The PostgreSQL server itself stopped for 10 s and started again (the
    metadata store, and the import's source and destination with it) while
    a `serve` and two `worker`s have runs and a table import query in
    flight: no process dies, each reconnects, every run ends once
    SUCCEEDED, and the import's rows are in the destination exactly once:
    the query in flight fails on its broken connection (its load rolled
    back, the ledger unmoved) and the next query loads the window once."""
    from conftest import postgres_databases, psql
    from preds import SOURCE, add_rows, fingerprint, job_toml
    workers = [cluster.start_worker(slots=4) for _ in range(2)]
    ledger = Ledger()
    s = cluster.server
    session, dep_url, ver = setup_deployment(s, sleep=0)
    org = dep_url.split("/")[4]
    env = {"LEDGER": ledger.url, "SLEEP": "1"}
    with postgres_databases("sluice_restart") as (src, dst):
        psql(src, SOURCE)
        add_rows(src, 1, 300_000, pad=100)
        job = s.cli_json("job", "create", "--org", org, "--file",
                          str(job_toml(tmp_path / "job.toml", src, dst)))["job"]["id"]
        run_ids = [session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": env,
                                                          "retry_count": 5}).json()["run_id"]
                   for _ in range(16)]
        wait_for(lambda: len(ledger_lines(ledger)) >= 4, "runs in flight")
        in_flight = wait_for(lambda: [q for q in s.cli_json("job", "queries", job, "--org", org)
                                      if q["status"] == "RUNNING"], "the import query in flight",
                             interval=0.05)[0]["id"]
        went_down = datetime.datetime.now(datetime.timezone.utc)
        restart_postgresql(down_for=10)
        assert s.proc.poll() is None and all(w.poll() is None for w in workers), \
            "a process died while PostgreSQL was down"

        def ended():
            statuses = [session.get(f"{dep_url}/runs/{r}").json()["status"] for r in run_ids]
            assert "FAILED" not in statuses, statuses
            return all(st == "SUCCEEDED" for st in statuses)

        wait_for(ended, "every run to succeed once PostgreSQL is back", timeout=180, interval=1)
        executions = collections.Counter(line[0] for line in ledger_lines(ledger))
        for r in run_ids:
            attempts = session.get(f"{dep_url}/runs/{r}/attempts").json()["entries"]
            assert sum(1 for a in attempts if a["outcome"] == "SUCCEEDED") == 1, attempts
            assert 1 <= executions[r] <= len(attempts), (r, executions[r], attempts)

        # The import: its query ends (whatever it ended as), a query run by
        # hand takes what is left, and every row is there once.
        def query_ended():
            qs = s.cli_json("job", "queries", job, "--org", org)
            return qs if all(q["status"] not in ("RUNNING", "PENDING") for q in qs) else None

        queries = wait_for(query_ended, "the import query to end", timeout=180, interval=1)
        # It was still running when PostgreSQL went down: it ended after.
        ended_at = next(q["finished_at"] for q in queries if q["id"] == in_flight)
        assert datetime.datetime.fromisoformat(ended_at.replace("Z", "+00:00")) > went_down, queries
        s.cli_json("job", "run", job, "--org", org)
        assert fingerprint(dst, "preds") == fingerprint(src, "preds")
        windows = psql(dst, "SELECT count(*) || ':' || count(DISTINCT (window_start, window_end)) "
                            "FROM sluice_load_ledger")
        loads, distinct = map(int, windows.split(":"))
        assert loads == distinct, f"a window loaded twice: {windows}; queries: {queries}"
        assert s.proc.poll() is None and all(w.poll() is None for w in workers)


def test_processes_sharing_postgresql_wake_each_other_instead_of_polling(tmp_path):
    """Every loop polls only every 30 s here: a run submitted to `serve
    --no-worker` is claimed by a separate `worker` at once (the scheduler's
    NOTIFY wakes it), and a job query queued from the command line starts
    in the server at once (the CLI's NOTIFY wakes its importer)."""
    from conftest import postgres_databases, psql
    from preds import SOURCE, add_rows, job_toml
    slow = {**FAST, "SLUICE_POLL_MS": "30000"}
    s = Sluice(tmp_path, fresh_postgres_database(), env=slow, worker=False)
    log = open(tmp_path / "worker.log", "w")
    LOGS.append(tmp_path / "worker.log")
    worker = subprocess.Popen([BIN, "worker", *s.store_args()], env=s.env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        session, dep_url, ver = setup_deployment(s, sleep=0)
        env = {"LEDGER": Ledger().url}
        time.sleep(2)  # both processes past their first turn: idle, polling every 30 s
        started = []
        for _ in range(3):
            t0 = time.time()
            run = session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": env}).json()["run_id"]
            wait_for(lambda: session.get(f"{dep_url}/runs/{run}").json()["status"] == "SUCCEEDED",
                     "the run", timeout=60, interval=0.05)
            started.append(time.time() - t0)
        assert max(started) < 10, f"runs waited for a poll: {started}"

        org = dep_url.split("/")[4]
        with postgres_databases("sluice_wake") as (src, dst):
            psql(src, SOURCE)
            add_rows(src, 1, 100)
            job = s.cli_json("job", "create", "--org", org, "--file",
                             str(job_toml(tmp_path / "job.toml", src, dst)))["job"]["id"]
            wait_for(lambda: [q for q in s.cli_json("job", "queries", job, "--org", org)
                              if q["status"] == "SUCCEEDED"], "the first query", timeout=60, interval=0.05)
            add_rows(src, 101, 200)
            t0 = time.time()
            query = s.cli_json("job", "run", job, "--org", org, "--detach")["id"]
            wait_for(lambda: [q for q in s.cli_json("job", "queries", job, "--org", org)
                              if q["id"] == query and q["status"] == "SUCCEEDED"],
                     "the queued query", timeout=60, interval=0.05)
            assert time.time() - t0 < 10, "the queued query waited for a poll"
    finally:
        worker.kill()
        worker.wait()
        s.stop()


def test_a_process_with_its_own_scheduler_sends_no_notify_for_it(cluster):
    """A submit wakes the scheduler of its own process, which admits every
    process's runs in one pass: no NOTIFY goes to the other processes'
    schedulers for it (a burst of submits sent one for most runs). The
    workers of other processes are still sent theirs."""
    import psycopg
    s = cluster.server
    listener = psycopg.connect(s.database_url, autocommit=True)
    ledger = Ledger()
    try:
        listener.execute("LISTEN sluice_wake")
        session, dep_url, ver = setup_deployment(s, sleep=0)
        runs = [session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": {"LEDGER": ledger.url}})
                .json()["run_id"] for _ in range(20)]
        cluster.start_worker()
        wait_for(lambda: all(session.get(f"{dep_url}/runs/{r}").json()["status"] == "SUCCEEDED"
                             for r in runs), "the runs", timeout=60, interval=0.1)
        heard = [n.payload.split("@")[0] for n in listener.notifies(timeout=1, stop_after=10_000)]
    finally:
        ledger.close()
        listener.close()
    assert "workers" in heard, f"the scheduler's wake-up of the other process's workers was not heard: {heard}"
    assert "scheduler" not in heard, f"submits sent NOTIFYs for the scheduler: {collections.Counter(heard)}"
