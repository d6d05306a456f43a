"""No secret in the server's log, at its most verbose (`SLUICE_LOG=debug`):
a password in an import job's connection URLs, an HTTP API source's bearer
token, a bad bearer token and a forged download token in requests — on
the paths that succeed and on those that fail. (Every log of the whole
test run is checked too, at its end: see conftest's `SECRETS`.)"""
import json
import subprocess

import requests

from conftest import BIN, SECRETS, Sluice, postgres_databases, psql, wait_for
from fake_api import source_file

PASSWORD = "pw-never-logged"


def test_the_debug_log_holds_no_secret(tmp_path, api):
    with postgres_databases("sluice_secret") as (src, dst):
        psql(src, "CREATE TABLE t (id bigint PRIMARY KEY, changed_at timestamptz NOT NULL, v text); "
                  "INSERT INTO t SELECT g, now(), 'v' FROM generate_series(1, 50) g")
        with_pw = lambda url: url.replace("postgres://postgres@", f"postgres://postgres:{PASSWORD}@")  # noqa: E731
        s = Sluice(tmp_path, env={"SLUICE_LOG": "debug"})
        try:
            org = s.new_org()[0]
            h = {"Authorization": f"Bearer {s.jwt(org)}"}
            job = tmp_path / "job.toml"
            job.write_text(f'name = "t"\nsource = "{with_pw(src)}"\ntable = "t"\n'
                           f'destination = "{with_pw(dst)}"\ntarget = "t"\n[schema]\npredictionId = "id"\n'
                           f'changeTimestamp = "changed_at"\n[ingestion]\nrefreshIntervalMinutes = 600\n')
            out = subprocess.run([BIN, "job", "create", "--org", org, "--file", str(job), "--json",
                                  *s.store_args()], env=s.env, capture_output=True, text=True, check=True)
            jid = json.loads(out.stdout)["job"]["id"]
            assert PASSWORD not in out.stdout
            queries = lambda: json.loads(subprocess.run(  # noqa: E731
                [BIN, "job", "queries", jid, "--org", org, "--json", *s.store_args()], env=s.env,
                capture_output=True, text=True, check=True).stdout)
            wait_for(lambda: queries() and queries()[0]["status"] == "SUCCEEDED", "the first query")
            # A query that fails: its source table is gone.
            psql(src, "DROP TABLE t")
            subprocess.run([BIN, "job", "run", jid, "--org", org, "--detach", *s.store_args()], env=s.env,
                           capture_output=True, check=True)
            wait_for(lambda: queries()[0]["status"] == "FAILED", "the failing query")
            # An HTTP API source with a bearer token: a run that succeeds,
            # and one that fails (nothing answers on port 9).
            r = requests.post(f"{s.url}/organizations/{org}/sources", json=source_file(api.url), headers=h)
            assert r.status_code == 201, r.text
            broken = source_file("http://127.0.0.1:9", name="broken")
            assert requests.post(f"{s.url}/organizations/{org}/sources", json=broken, headers=h).status_code == 201
            runs = [requests.post(f"{s.url}/organizations/{org}/sources/{n}/runs", json={}, headers=h).json()["id"]
                    for n in ("shop", "broken")]
            for run, want in zip(runs, ("SUCCEEDED", "FAILED")):
                wait_for(lambda: requests.get(f"{s.url}/organizations/{org}/api-runs/{run}", headers=h)
                         .json()["status"] == want, f"API run {run} to end {want}")
            # Requests carrying secrets where they do not belong.
            assert requests.get(f"{s.url}/organizations/{org}/deployments",
                                headers={"Authorization": f"Bearer {PASSWORD}"}).status_code == 401
            assert requests.get(f"{s.url}/downloads/{PASSWORD}").status_code in (400, 401, 403, 404)
            assert requests.get(f"{s.url}/organizations/{org}/sources/{PASSWORD}",
                                headers=h).status_code == 404
        finally:
            s.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "DEBUG" in log and "API run" in log and "import query ended" in log, "the log is the verbose one"
    leaked = [secret for secret in SECRETS if secret in log]
    assert not leaked, leaked
