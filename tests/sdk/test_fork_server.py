"""Runs forked from a warm interpreter per code version: the module is
imported once, yet nothing a run leaves behind (a module global, an
environment variable, memory) reaches the next run; an import that fails
fails every run with its error; a version can ask for a fresh interpreter;
idle servers, servers of deleted versions and servers beyond the warm limit
are stopped."""
import hashlib
import json
import os
import time

import pytest

from conftest import Sluice, deployment_of, fresh_postgres_database, wait_for

STATEFUL = '''
import os, resource, time

IMPORTED_AT = time.time()
print("importing main", flush=True)
RUNS = []
HOARD = []

def handler(request, context):
    seen = {
        "imported_at": IMPORTED_AT,
        "runs_before": len(RUNS),
        "hoard_before": len(HOARD),
        "leaked_env": os.environ.get("LEAKED"),
        "own_env": os.environ.get("MINE"),
        "run_id_env": os.environ.get("ABEJA_RUN_ID"),
        "maxrss_kib_at_start": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
    }
    RUNS.append(context["run_id"])
    os.environ["LEAKED"] = "from " + context["run_id"]
    if os.environ.get("LEAK_MB"):
        # Written, so resident: 300 MiB this run keeps until it ends.
        HOARD.append(b"x" * (int(os.environ["LEAK_MB"]) << 20))
    print("SEEN " + json.dumps(seen), flush=True)
'''.replace("import os, resource, time", "import json, os, resource, time")


def run_and_wait(session, dep_url, ver, env=None):
    r = session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": env or {},
                                              "retry_count": 0}).json()
    done = wait_for(lambda: (x := session.get(f"{dep_url}/runs/{r['run_id']}").json())["status"]
                    in ("SUCCEEDED", "FAILED") and x, "the run")
    logs = [e["message"] for e in session.get(f"{dep_url}/runs/{r['run_id']}/logs").json()["events"]]
    return done, logs


def seen_of(logs):
    lines = [m for m in logs if m.startswith("SEEN ")]
    assert len(lines) == 1, logs
    return json.loads(lines[0][len("SEEN "):])


def servers(s):
    """The warm interpreters of this sluice: its children that run the runner."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == s.proc.pid and str(s.data_dir / "runner.py").encode() in cmd:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_runs_of_one_version_share_the_import_and_nothing_else(backend, tmp_path):
    url = fresh_postgres_database() if backend == "postgres" else None
    s = Sluice(tmp_path, url)
    try:
        session, dep_url, ver = deployment_of(s, STATEFUL)
        first, first_logs = run_and_wait(session, dep_url, ver, {"MINE": "one", "LEAK_MB": "300"})
        assert first["status"] == "SUCCEEDED", (first, first_logs)
        second, second_logs = run_and_wait(session, dep_url, ver, {"MINE": "two"})
        assert second["status"] == "SUCCEEDED", (second, second_logs)
        a, b = seen_of(first_logs), seen_of(second_logs)

        # One import, kept warm: both runs see the same module, forked from
        # the same server, each in its own process group.
        assert a["imported_at"] == b["imported_at"], (a, b)
        assert a["ppid"] == b["ppid"] and a["pid"] != b["pid"], (a, b)
        assert a["pgid"] == a["pid"] and b["pgid"] == b["pid"], (a, b)
        assert "forked from the version's warm interpreter" in first_logs[0], first_logs
        # What the import printed is the first run's log, not the second's.
        assert "importing main" in first_logs and "importing main" not in second_logs

        # Nothing of the first run reaches the second.
        assert a["runs_before"] == 0 and b["runs_before"] == 0, (a, b)
        assert b["hoard_before"] == 0, b
        assert b["leaked_env"] is None, b
        assert (a["own_env"], b["own_env"]) == ("one", "two")
        assert a["run_id_env"] == first["run_id"] and b["run_id_env"] == second["run_id"]
        assert a["cwd"] != b["cwd"] and a["cwd"].endswith(f"{first['run_id']}-1"), (a, b)
        # The first run grew by 300 MiB; the second starts where the first
        # started, not 300 MiB higher.
        assert b["maxrss_kib_at_start"] < a["maxrss_kib_at_start"] + 100 * 1024, (a, b)
    finally:
        s.stop()


ECHO = """
import hashlib, json, os

def handler(request, context):
    data = request["input_data"]
    print("GOT " + json.dumps({"n": data["n"], "text": hashlib.sha256(json.dumps(data["text"]).encode()).hexdigest(),
                               "run_id": context["run_id"],
                               "attempt": context.attempt, "cwd": os.getcwd(),
                               "files": sorted(os.listdir("."))}), flush=True)
"""


def test_a_forked_run_gets_its_request_small_or_large(sluice):
    """A small request travels in the fork's message (the run's folder
    starts empty); one larger than a message goes through files; the
    handler sees the same either way."""
    session, dep_url, ver = deployment_of(sluice, ECHO)
    small = {"n": 1, "text": "héllo"}
    large = {"n": 2, "text": ["x" * 60_000] * 4}  # a string is at most 64 KiB
    got = {}
    for name, data in (("small", small), ("large", large)):
        r = session.post(f"{dep_url}/runs", json={"version_id": ver, "input_data": data,
                                                  "retry_count": 0}).json()
        done = wait_for(lambda: (x := session.get(f"{dep_url}/runs/{r['run_id']}").json())["status"]
                        in ("SUCCEEDED", "FAILED") and x, "the run")
        logs = [e["message"] for e in session.get(f"{dep_url}/runs/{r['run_id']}/logs").json()["events"]]
        assert done["status"] == "SUCCEEDED", (done, logs)
        assert "forked from the version's warm interpreter" in logs[0], logs
        line = [m for m in logs if m.startswith("GOT ")]
        assert len(line) == 1, logs
        got[name] = json.loads(line[0][4:])
        assert got[name]["run_id"] == r["run_id"] and got[name]["attempt"] == 1, got[name]
        assert got[name]["cwd"].endswith(f"{r['run_id']}-1"), got[name]
    for name, data in (("small", small), ("large", large)):
        assert got[name]["n"] == data["n"], got[name]
        assert got[name]["text"] == hashlib.sha256(json.dumps(data["text"]).encode()).hexdigest(), got[name]
    assert got["small"]["files"] == [], got["small"]
    assert got["large"]["files"] == ["context.json", "request.json"], got["large"]


def test_a_failing_import_fails_each_run_with_its_error(sluice):
    code = 'print("about to fail", flush=True)\nimport no_such_module_here\n\ndef handler(r, c):\n    pass\n'
    session, dep_url, ver = deployment_of(sluice, code)
    for _ in range(2):
        done, logs = run_and_wait(session, dep_url, ver)
        assert done["status"] == "FAILED", done
        error = done["attempts"][-1]["error"] if done.get("attempts") else json.dumps(done)
        assert "No module named 'no_such_module_here'" in error, done
        text = "\n".join(logs)
        # Each run tried the import again: its output and traceback are there.
        assert "about to fail" in text and "Traceback" in text, logs
        assert "ModuleNotFoundError" in text, logs
    # No server is left for a version that cannot import.
    assert servers(sluice) == []


NUL = """
import os

def handler(request, context):
    print("before\\x00after", flush=True)
    if os.environ.get("FAIL"):
        raise ValueError("bad\\x00value")
"""


def test_output_with_nul_bytes_keeps_the_runs_logs_and_end(sluice):
    """A NUL byte in what a handler prints or raises (PostgreSQL's text
    holds none) is stored as U+FFFD: the run ends as its code did, with its
    logs, instead of losing its end (and later its lease)."""
    session, dep_url, ver = deployment_of(sluice, NUL)
    for fail, status in (("", "SUCCEEDED"), ("1", "FAILED")):
        r = session.post(f"{dep_url}/runs", json={"version_id": ver, "environment": {"FAIL": fail},
                                                  "retry_count": 0}).json()
        done = wait_for(lambda: (x := session.get(f"{dep_url}/runs/{r['run_id']}").json())["status"]
                        in ("SUCCEEDED", "FAILED") and x, "the run", timeout=20)
        logs = [e["message"] for e in session.get(f"{dep_url}/runs/{r['run_id']}/logs").json()["events"]]
        assert done["status"] == status, (done, logs)
        assert "before\ufffdafter" in logs, logs
        if fail:
            assert "bad\ufffdvalue" in json.dumps(done, ensure_ascii=False), done
            assert not any("lost" in m for m in logs), logs


def test_a_version_can_ask_for_a_fresh_interpreter(sluice):
    session, dep_url, ver = deployment_of(sluice, STATEFUL)
    dep = session.get(dep_url).json()
    patched = session.patch(dep_url, json={"default_environment": {"SLUICE_FRESH_INTERPRETER": "1"}})
    assert patched.status_code == 200, (patched.status_code, patched.text, dep)
    _, logs_a = run_and_wait(session, dep_url, ver)
    _, logs_b = run_and_wait(session, dep_url, ver)
    a, b = seen_of(logs_a), seen_of(logs_b)
    assert "in a fresh interpreter" in logs_a[0], logs_a
    # Imported by each run.
    assert a["imported_at"] != b["imported_at"] and "importing main" in logs_b, (a, b)
    assert servers(sluice) == []


def test_servers_are_bounded_and_stopped_when_idle_or_deleted(tmp_path):
    s = Sluice(tmp_path, env={"SLUICE_WARM_VERSIONS": "2", "SLUICE_WARM_IDLE_SECS": "3"})
    try:
        noop = "def handler(r, c):\n    pass\n"
        made = [deployment_of(s, noop, name=f"d{i}") for i in range(3)]
        seen = []
        for session, dep_url, ver in made:
            done, logs = run_and_wait(session, dep_url, ver)
            assert done["status"] == "SUCCEEDED", (done, logs)
            seen.append(len(servers(s)))
        # Two warm at most: the third version's server replaced the idlest.
        assert seen == [1, 2, 2], seen
        # Deleting a version stops its server (at the next sweep), idle or not.
        session, dep_url, ver = made[2]
        before = servers(s)
        assert session.delete(f"{dep_url}/versions/{ver}").status_code == 200
        wait_for(lambda: len(servers(s)) < len(before), "the deleted version's server to stop", timeout=20)
        # Idle for longer than SLUICE_WARM_IDLE_SECS: all stopped.
        wait_for(lambda: servers(s) == [], "idle servers to stop", timeout=20)
        # And a new run starts one again.
        session, dep_url, ver = made[0]
        started = time.time()
        done, _ = run_and_wait(session, dep_url, ver)
        assert done["status"] == "SUCCEEDED" and len(servers(s)) == 1, (done, time.time() - started)
    finally:
        s.stop()


def test_a_forked_run_is_cancelled_and_timed_out_with_its_whole_group(tmp_path):
    code = ('import os, subprocess, time\n'
            'def handler(r, c):\n'
            '    subprocess.Popen(["sleep", "317"])\n'
            '    print("sleeping", flush=True)\n'
            '    time.sleep(300)\n')
    s = Sluice(tmp_path, env={"SLUICE_RUN_TIMEOUT_SECS": "4", "SLUICE_HEARTBEAT_MS": "200"})
    try:
        session, dep_url, ver = deployment_of(s, code)
        r = session.post(f"{dep_url}/runs", json={"version_id": ver, "retry_count": 0}).json()
        wait_for(lambda: any(e["message"] == "sleeping" for e in
                             session.get(f"{dep_url}/runs/{r['run_id']}/logs").json()["events"]),
                 "the run to start sleeping")
        assert session.post(f"{dep_url}/runs/{r['run_id']}/cancel").status_code == 200
        done = wait_for(lambda: (x := session.get(f"{dep_url}/runs/{r['run_id']}").json())["status"]
                        in ("CANCELLED", "FAILED") and x, "the cancel")
        assert done["status"] == "CANCELLED", done

        t = session.post(f"{dep_url}/runs", json={"version_id": ver, "retry_count": 0}).json()
        done = wait_for(lambda: (x := session.get(f"{dep_url}/runs/{t['run_id']}").json())["status"]
                        in ("SUCCEEDED", "FAILED") and x, "the timeout", timeout=30)
        assert done["status"] == "FAILED", done
        # Neither the runs nor the sleeps they started are left: only the
        # server itself is a child of it. (The sleeps have an unusual
        # length: the scan sees every process on the machine.)
        def stray():
            out = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                    except OSError:
                        continue
                    if cmd == b"sleep\x00317\x00":
                        out.append(pid)
            return out
        wait_for(lambda: stray() == [], "the runs' sleeps to be killed", timeout=10)
        assert len(servers(s)) == 1
    finally:
        s.stop()


SPIN = '''
import os, time

def handler(request, context):
    start = time.process_time()
    while time.process_time() - start < float(os.environ.get("SPIN", "0")):
        pass
    print("SEEN {\\"ppid\\": %d}" % os.getppid(), flush=True)
'''


def test_a_forked_runs_cpu_seconds_are_its_own(tmp_path):
    """The deployment's CPU limit is each run's: a run that spins past it is
    killed, and the warm interpreter — whose own time is not a run's — goes
    on forking the next."""
    s = Sluice(tmp_path)
    try:
        session, dep_url, ver = deployment_of(s, SPIN)
        org, dep = dep_url.split("/")[-3], dep_url.split("/")[-1]
        s.cli("deployment", "limits", "--org", org, dep, "--cpu-seconds", "1")
        quick, quick_logs = run_and_wait(session, dep_url, ver)
        assert quick["status"] == "SUCCEEDED", (quick, quick_logs)
        spun, spun_logs = run_and_wait(session, dep_url, ver, {"SPIN": "5"})
        assert spun["status"] == "FAILED", (spun, spun_logs)
        assert "killed by signal" in spun["error"], spun  # at the hard limit: SIGKILL
        again, again_logs = run_and_wait(session, dep_url, ver)
        assert again["status"] == "SUCCEEDED", (again, again_logs)
        assert seen_of(again_logs)["ppid"] == seen_of(quick_logs)["ppid"]
    finally:
        s.stop()
