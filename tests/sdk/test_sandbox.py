"""User code is untrusted: a handler that tries to read the server's files
(the metadata store, the objects folder, other versions' code, other runs'
folders, files of the host such as /etc/shadow) or the server's environment and
command line through /proc gets nothing, while its own folder and code
work. The server holds a secret in its environment and its database URL,
so a leak would show."""
import json
import os

import pytest
import requests

from conftest import Sluice, code_archive, fresh_postgres_database, wait_for

PROBE = '''
import json, os

def attempt(path, write=False):
    try:
        if write:
            with open(path, "w") as f:
                f.write("x")
            return "wrote"
        if os.path.isdir(path):
            return "listed %d" % len(os.listdir(path))
        with open(path, "rb") as f:
            return "read %d bytes: %r" % (len(data := f.read(4096)), data[:200])
    except Exception as e:
        return "refused: " + type(e).__name__

def handler(request, context):
    data = os.environ["DATA_DIR"]
    other = os.environ.get("OTHER_RUN_DIR", "")
    ppid = os.getppid()
    seen = {
        "store": attempt(os.path.join(data, "sluice.db")) if os.path.exists(os.path.join(data, "sluice.db"))
                 else "refused: PermissionError (no store file: PostgreSQL)",
        "data_dir": attempt(data),
        "objects": attempt(os.path.join(data, "objects")),
        "code": attempt(os.path.join(data, "code")),
        "runs": attempt(os.path.join(data, "runs")),
        "version_runs": attempt(os.path.dirname(os.getcwd())),
        "other_run": attempt(other) if other else "none",
        "parent_environ": attempt("/proc/%d/environ" % ppid),
        "parent_cmdline": attempt("/proc/%d/cmdline" % ppid),
        "etc_shadow": attempt("/etc/shadow"),
        "tmp": attempt("/tmp/sluice-sandbox-probe", write=True),
        "own_folder": attempt("mine.txt", write=True),
        "own_code": attempt(os.path.join(os.environ["SLUICE_CODE_DIR"], "main.py")),
        "secret_in_env": "SERVER_SECRET" in os.environ,
        "uid": os.getuid(),
    }
    print("PROBE " + json.dumps(seen), flush=True)
    if os.environ.get("SLEEP"):
        import time
        time.sleep(float(os.environ["SLEEP"]))
'''

REFUSED = ["store", "data_dir", "objects", "code", "runs", "version_runs", "other_run", "parent_environ",
           "parent_cmdline", "etc_shadow", "tmp"]


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "as-nobody", "fresh-interpreter"])
def test_a_handler_reads_nothing_of_the_server(backend, tmp_path):
    """Runs forked from the version's warm interpreter (the default; its
    other runs' folders are where the server works) and, for one case, a
    fresh interpreter per run."""
    url = fresh_postgres_database() if backend == "postgres" else None
    env = {"SERVER_SECRET": "hunter2", "SLUICE_RETRY_BASE_MS": "100"}
    if backend == "fresh-interpreter":
        env["SLUICE_USER_CODE"] = "fresh"
    if backend == "as-nobody":
        # A server run as root whose interpreter and data dir an
        # unprivileged user can reach: runs drop to `nobody`.
        if os.geteuid() != 0:
            pytest.fail("the as-nobody case needs the tests to run as root (as CI does)")
        assert os.path.exists(SYSTEM_PYTHON), f"{SYSTEM_PYTHON} is needed for the as-nobody case"
        import tempfile
        from pathlib import Path
        tmp_path = Path(tempfile.mkdtemp(prefix="sluice-nobody-", dir="/tmp"))
        tmp_path.chmod(0o755)
        env["SLUICE_PYTHON"] = SYSTEM_PYTHON
    s = Sluice(tmp_path, url, env=env)
    try:
        org, user, token = s.new_org()
        session = requests.Session()
        session.auth = (f"user-{user}", token)
        base = f"{s.url}/organizations/{org}/deployments"
        dep = session.post(base, json={"name": "probe"}).json()["deployment_id"]
        ver = session.post(f"{base}/{dep}/versions",
                           json={"version": "1", "handler": "main:handler", "image": "python"}).json()
        assert requests.put(ver["upload_url"], data=code_archive({"main.py": PROBE})).status_code == 200

        def submit(env):
            return session.post(f"{base}/{dep}/runs", json={"version_id": ver["version_id"], "environment": env,
                                                            "retry_count": 0}).json()

        def run(env):
            r = submit(env)
            done = wait_for(lambda: (x := session.get(f"{base}/{dep}/runs/{r['run_id']}").json())["status"]
                            in ("SUCCEEDED", "FAILED") and x, "the probe run")
            assert done["status"] == "SUCCEEDED", done
            logs = session.get(f"{base}/{dep}/runs/{r['run_id']}/logs").json()
            lines = [e["message"] for e in logs["events"] if e["message"].startswith("PROBE ")]
            assert lines, logs
            return r["run_id"], json.loads(lines[0][len("PROBE "):])

        data = str(s.data_dir)
        if os.path.exists("/tmp/sluice-sandbox-probe"):
            os.remove("/tmp/sluice-sandbox-probe")
        # Another run, still running: its folder is there to be probed.
        sleeper = submit({"DATA_DIR": data, "SLEEP": "60"})["run_id"]
        other = os.path.join(data, "runs", ver["version_id"], f"{sleeper}-1")
        # The sleeper's probe writes mine.txt in its folder: then it is there, and running.
        wait_for(lambda: os.path.exists(os.path.join(other, "mine.txt")), "the other run's folder")
        _, seen = run({"DATA_DIR": data, "OTHER_RUN_DIR": other})
        session.post(f"{base}/{dep}/runs/{sleeper}/cancel")
        # Refused by the sandbox, not missing: the paths are real.
        for what in REFUSED:
            assert seen[what].startswith("refused: PermissionError"), (what, seen[what])
        assert os.path.isdir(os.path.join(data, "objects")) and os.path.isdir(other)
        # The signing key is no file beside the runs' folders at all.
        assert not os.path.exists(os.path.join(data, "jwt.key"))
        assert seen["own_folder"] == "wrote", seen
        assert seen["own_code"].startswith("read"), seen
        assert seen["secret_in_env"] is False
        assert (seen["uid"] == 65534) == (backend == "as-nobody"), seen
        assert not os.path.exists("/tmp/sluice-sandbox-probe")
        assert "hunter2" not in json.dumps(seen)
        how = "a fresh interpreter" if backend == "fresh-interpreter" else "a process forked from"
        first = session.get(f"{base}/{dep}/runs/{sleeper}/logs").json()["events"][0]["message"]
        assert how in first, first
    finally:
        s.stop()
        if backend == "as-nobody":
            import shutil
            shutil.rmtree(tmp_path, ignore_errors=True)
