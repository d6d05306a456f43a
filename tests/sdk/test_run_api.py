"""The Run/Deployment API (ABEJA Platform) as the official abeja-sdk sees it,
against a real sluice on SQLite and on PostgreSQL."""
import json
import subprocess

import requests
import pytest

from abeja.common.connection import Connection
from abeja.datalake import APIClient as DatalakeClient
from abeja.deployments import APIClient as DeploymentClient
from abeja.runs import APIClient as RunClient
from abeja.exceptions import BadRequest, Forbidden, NotFound, Unauthorized

from conftest import BIN, code_archive, wait_for

HANDLER = '''
import os
import sys

def handler(request, context):
    print("hello from", context["run_id"], "attempt", context.attempt)
    print("EXAMPLE_ENV=" + os.environ.get("EXAMPLE_ENV", "<unset>"))
    print("DEFAULT_ENV=" + os.environ.get("DEFAULT_ENV", "<unset>"))
    print("PARAM=" + os.environ.get("PARAM", "<unset>"))
    print("input=" + repr(request["input_data"]))
    for item in request["contents"]:
        print("content=" + item.text() + " as " + item["content_type"])
    for i in range(int(os.environ.get("LINES", "0"))):
        print("line %d" % i)
    print("to stderr", file=sys.stderr)
    return {"ok": True}
'''

FAILING = '''
import os

def handler(request, context):
    print("about to fail on attempt", context.attempt)
    raise ValueError("no such table: events")
'''

SLOW = '''
import time

def handler(request, context):
    print("started", flush=True)
    time.sleep(120)
'''


def clients(sluice, credential):
    Connection.BASE_URL = sluice.url
    return DeploymentClient(credential=credential, max_retry_count=0), RunClient(
        credential=credential, max_retry_count=0)


def pat(user, token):
    return {"user_id": user, "personal_access_token": token}


def deploy(deployments, org, source, **env):
    dep = deployments.create_deployment(org, "scorer", description="scores events",
                                        default_environment=env or None)
    ver = deployments.create_deployment_version(
        org, dep["deployment_id"], "0.0.1", "main:handler", "abeja-inc/all-cpu:19.10",
        user_parameters={"PARAM": "from-version"})
    # The SDK's documented upload: a plain PUT to upload_url, no credentials.
    res = requests.put(ver["upload_url"], data=code_archive({"main.py": source}))
    assert res.status_code == 200, res.text
    return dep["deployment_id"], ver["version_id"]


def finished(runs, org, dep, run_id):
    def check():
        r = runs.get_run(org, dep, run_id)
        return r if r["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED") else None
    return check


def test_deploy_submit_and_read_logs(sluice):
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER, DEFAULT_ENV="from-deployment")

    got = deployments.get_deployment(org, dep)
    assert got["name"] == "scorer" and got["default_environment"] == {"DEFAULT_ENV": "from-deployment"}
    assert got["creator"]["id"] == user
    assert [d["deployment_id"] for d in deployments.get_deployments(org)["entries"]] == [dep]
    listed = deployments.get_deployment_versions(org, dep)["entries"]
    assert [(v["version_id"], v["handler"]) for v in listed] == [(ver, "main:handler")]
    assert deployments.get_deployment_version(org, dep, ver)["user_parameters"] == {"PARAM": "from-version"}
    link = deployments.download_deployment_version(org, dep, ver)["download_uri"]
    assert requests.get(link).content[:2] == b"\x1f\x8b"

    lake = DatalakeClient(credential=pat(user, token), max_retry_count=0)
    channel = lake.create_channel(org, "in", "", "datalake")["channel"]["channel_id"]
    file_id = lake.post_channel_file_upload(channel, b"id,score", "text/csv")["file_id"]
    path = f"{channel}/{file_id}"
    run = runs.create_run(org, dep, ver, input_data={"$datalake:1": path},
                          environment={"EXAMPLE_ENV": "example", "LINES": "250"}, retry_count=0,
                          model_id="3333333333333")
    assert run["run_id"].startswith("run-") and len(run["run_id"]) == 20
    assert run["status"] == "SUBMITTED"
    assert run["model_version"] == "0.0.1" and run["model_version_id"] == ver
    assert run["user_env_vars"] == {"EXAMPLE_ENV": "example", "LINES": "250"}
    assert run["models"] == {"alias": "3333333333333"}
    assert run["created_at"].endswith("Z") and len(run["created_at"]) == 27

    done = wait_for(finished(runs, org, dep, run["run_id"]), "the run to finish")
    assert done["status"] == "SUCCEEDED", done

    # /logs: ascending, 100 a page, next_token absent on the last page.
    messages, token_, pages = [], None, 0
    while True:
        page = runs.get_run_logs(org, dep, run["run_id"], next_token=token_)
        pages += 1
        messages += [e["message"] for e in page["events"]]
        assert all(e["timestamp"].endswith("Z") for e in page["events"])
        if "next_token" not in page:
            break
        token_ = page["next_token"]
    assert pages == 3
    user_lines = [m for m in messages if not m.startswith("[sluice]")]
    # Each pipe keeps its order; the two pipes' lines interleave as they are read.
    stdout_lines = [m for m in user_lines if m != "to stderr"]
    assert stdout_lines[0] == f"hello from {run['run_id']} attempt 1"
    assert "EXAMPLE_ENV=example" in user_lines
    assert "DEFAULT_ENV=from-deployment" in user_lines
    assert "PARAM=from-version" in user_lines
    assert f"input={{'$datalake:1': '{path}'}}" in user_lines
    assert "content=id,score as text/csv" in user_lines
    assert [m for m in user_lines if m.startswith("line ")] == [f"line {i}" for i in range(250)]
    assert "to stderr" in user_lines

    # /recentlogs: newest first; walk backwards to the start, then forwards finds nothing new.
    first = runs.get_run_recent_logs(org, dep, run["run_id"])
    assert {"next_forward_token", "next_backward_token"} <= set(first)
    backwards = [e["message"] for e in first["events"]]
    back = first["next_backward_token"]
    while True:
        page = runs.get_run_recent_logs(org, dep, run["run_id"], next_backward_token=back)
        assert {"next_forward_token", "next_backward_token"} <= set(page)
        if not page["events"]:
            break
        backwards += [e["message"] for e in page["events"]]
        back = page["next_backward_token"]
    assert backwards == list(reversed(messages))
    ahead = runs.get_run_recent_logs(org, dep, run["run_id"], next_forward_token=first["next_forward_token"])
    assert ahead["events"] == [] and ahead["next_forward_token"] and ahead["next_backward_token"]

    # A time window that ends before the run started holds nothing.
    import datetime
    early = datetime.datetime(2000, 1, 1)
    assert runs.get_run_logs(org, dep, run["run_id"], start_time=early, end_time=early)["events"] == []


def test_runs_list_across_pages_in_both_directions(sluice):
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER)
    submitted = [runs.create_run(org, dep, ver, retry_count=0)["run_id"] for _ in range(25)]

    def walk(scan_forward):
        seen, token_, pages = [], None, 0
        while True:
            page = runs.get_runs(org, dep, next_page_token=token_, scan_forward=scan_forward)
            pages += 1
            seen += [r["run_id"] for r in page["entries"]]
            token_ = page.get("next_page_token")
            if not token_:
                return seen, pages

    newest_first, pages = walk(False)
    assert pages == 3 and newest_first == list(reversed(submitted))
    oldest_first, pages = walk(True)
    assert pages == 3 and oldest_first == submitted
    for run_id in submitted:
        wait_for(finished(runs, org, dep, run_id), f"{run_id} to finish")
    assert {runs.get_run(org, dep, r)["status"] for r in submitted} == {"SUCCEEDED"}


def test_a_failing_handler_is_retried_and_fails_with_its_error(sluice):
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, FAILING)
    run = runs.create_run(org, dep, ver, retry_count=1)
    done = wait_for(finished(runs, org, dep, run["run_id"]), "the run to fail")
    assert done["status"] == "FAILED"
    assert done["attempt_count"] == 2
    assert "ValueError: no such table: events" in done["error"]
    logs = [e["message"] for e in runs.get_run_logs(org, dep, run["run_id"])["events"]]
    assert "about to fail on attempt 1" in logs and "about to fail on attempt 2" in logs
    assert any("Traceback" in m for m in logs)
    attempts = requests.get(f"{sluice.url}/organizations/{org}/deployments/{dep}/runs/{run['run_id']}/attempts",
                            auth=(f"user-{user}", token)).json()["entries"]
    assert [a["outcome"] for a in attempts] == ["FAILED", "FAILED"]


def test_cancel_stops_a_running_handler(sluice):
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, SLOW)
    run = runs.create_run(org, dep, ver, retry_count=3)
    run_id = run["run_id"]
    wait_for(lambda: any(e["message"] == "started" for e in runs.get_run_logs(org, dep, run_id)["events"]),
             "the handler to start")
    cancel = f"{sluice.url}/organizations/{org}/deployments/{dep}/runs/{run_id}/cancel"
    first = requests.post(cancel, auth=(f"user-{user}", token))
    assert first.status_code == 200 and first.json()["status"] in ("CANCELING", "CANCELLED")
    again = requests.post(cancel, auth=(f"user-{user}", token))
    assert again.status_code == 200, "a repeated cancel is harmless"
    done = wait_for(finished(runs, org, dep, run_id), "the run to stop", timeout=30)
    assert done["status"] == "CANCELLED" and done["attempt_count"] == 1


def test_bearer_jwt_from_get_token_is_accepted(sluice):
    org, _, _ = sluice.new_org()
    deployments, _ = clients(sluice, {"auth_token": sluice.jwt(org)})
    dep = deployments.create_deployment(org, "via-jwt")
    assert deployments.get_deployment(org, dep["deployment_id"])["name"] == "via-jwt"
    assert deployments.delete_deployment(org, dep["deployment_id"]) == {"message": f"{dep['deployment_id']} deleted"}
    with pytest.raises(NotFound):
        deployments.get_deployment(org, dep["deployment_id"])


def _signed(key, claims):
    """A JWT signed with the server's own key, as only the server should make."""
    import base64, hashlib, hmac, json as _json
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = enc(b'{"alg":"HS256","typ":"JWT"}') + "." + enc(_json.dumps(claims).encode())
    return head + "." + enc(hmac.new(key.encode(), head.encode(), hashlib.sha256).digest())


def test_jwts_name_a_real_user_and_can_be_revoked(tmp_path):
    from conftest import Sluice
    import time as _time
    key = "k" * 40
    s = Sluice(tmp_path, env={"SLUICE_JWT_KEY": key})
    try:
        org, user, token = s.new_org()
        other_org, other_user, _ = s.new_org()
        url = f"{s.url}/organizations/{org}/deployments"
        bearer = lambda t: {"Authorization": f"Bearer {t}"}
        jwt = s.jwt(org)
        assert requests.get(url, headers=bearer(jwt)).status_code == 200
        now = int(_time.time())
        # Well signed, but no such user; another organization's user; no user.
        for claims in ({"org": org, "sub": "9" * 13, "iat": now, "exp": now + 60},
                       {"org": org, "sub": other_user, "iat": now, "exp": now + 60},
                       {"org": org, "iat": now, "exp": now + 60}):
            res = requests.get(url, headers=bearer(_signed(key, claims)))
            assert res.status_code == 401, (claims, res.text)
            assert res.json()["error"] == "unauthorized", res.text
        assert requests.get(url, headers=bearer(_signed(key, {"org": org, "sub": user, "iat": now,
                                                              "exp": now + 60}))).status_code == 200

        out = s.cli("auth", "revoke", "--org", org, "--user", user)
        assert user in out and "revoked" in out
        res = requests.get(url, headers=bearer(jwt))
        assert res.status_code == 401 and "revoked" in res.json()["error_description"], res.text
        fresh = s.jwt(org)
        assert requests.get(url, headers=bearer(fresh)).status_code == 200
        assert requests.get(url, auth=(f"user-{user}", token)).status_code == 200, "the PAT is not a JWT"
        # Revoking an organization reaches every one of its users, no other.
        theirs = s.jwt(other_org)
        s.cli("auth", "revoke", "--org", org)
        assert requests.get(url, headers=bearer(fresh)).status_code == 401
        assert requests.get(f"{s.url}/organizations/{other_org}/deployments",
                            headers=bearer(theirs)).status_code == 200
    finally:
        s.stop()


def test_silent_and_trickling_connections_are_dropped(tmp_path):
    import socket
    from conftest import Sluice
    s = Sluice(tmp_path, env={"SLUICE_HEADER_TIMEOUT_MS": "500", "SLUICE_BODY_TIMEOUT_MS": "500"})
    try:
        org, user, token = s.new_org()
        import base64
        basic = base64.b64encode(f"user-{user}:{token}".encode()).decode()

        def talk(first, wait=1.5):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.settimeout(5)  # far past both timeouts: a held connection fails the test
            c.sendall(first)
            import time as _t
            _t.sleep(wait)
            got = b""
            try:
                while chunk := c.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            c.close()
            return got

        # Headers that never end: closed without an answer.
        assert talk(b"GET /healthz HTTP/1.1\r\nHost: x\r\n") == b""
        # A body that stops after 10 of its 100 bytes: 408, in the envelope.
        got = talk((f"POST /organizations/{org}/deployments HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Basic {basic}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 100\r\n\r\n" + '{"name": "').encode())
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), got
        assert b"request_timeout" in body and b"500 ms" in body, got
        # Nothing was stored, and the server still answers.
        res = requests.get(f"{s.url}/organizations/{org}/deployments", auth=(f"user-{user}", token))
        assert res.status_code == 200 and res.json()["entries"] == [], res.text
    finally:
        s.stop()


def test_errors_are_the_documented_exceptions(sluice):
    org, user, token = sluice.new_org()
    other_org, other_user, other_token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER)

    with pytest.raises(NotFound):
        deployments.get_deployment(org, "1111111111111")
    with pytest.raises(NotFound):
        runs.get_run(org, dep, "run-3333333333333333")
    with pytest.raises(NotFound):
        runs.create_run(org, dep, "ver-1111111111111111")

    bad_deployments, _ = clients(sluice, pat(user, "not-the-token"))
    with pytest.raises(Unauthorized):
        bad_deployments.get_deployments(org)
    anonymous = requests.get(f"{sluice.url}/organizations/{org}/deployments")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"

    others, other_runs = clients(sluice, pat(other_user, other_token))
    with pytest.raises(Forbidden):
        others.get_deployment(org, dep)
    with pytest.raises(Forbidden):
        other_runs.create_run(org, dep, ver)

    _, runs = clients(sluice, pat(user, token))
    with pytest.raises(BadRequest) as e:
        runs.create_run(org, dep, ver, retry_count=10)
    assert "retry_count" in e.value.error_description
    with pytest.raises(BadRequest):
        deployments.create_deployment_version(org, dep, "0.0.2", "main", "img")
    with pytest.raises(BadRequest):
        deployments.create_deployment_version(org, dep, "0.0.1", "main:handler", "img")
    bare = deployments.create_deployment_version(org, dep, "0.0.3", "main:handler", "img")
    with pytest.raises(BadRequest) as e:
        runs.create_run(org, dep, bare["version_id"])
    assert "upload_url" in e.value.error_description
    not_json = requests.post(f"{sluice.url}/organizations/{org}/deployments/{dep}/runs",
                             data="{oops", auth=(f"user-{user}", token))
    assert not_json.status_code == 400 and "not valid" in not_json.json()["error_description"]
    junk = requests.put(bare["upload_url"], data=b"not an archive")
    assert junk.status_code == 400 and "tar.gz" in junk.json()["error_description"]
    forged = requests.put(bare["upload_url"] + "x", data=code_archive({"main.py": HANDLER}))
    assert forged.status_code == 403


def test_idempotency_key_makes_a_retried_submit_answer_the_same_run(sluice):
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER)
    url = f"{sluice.url}/organizations/{org}/deployments/{dep}/runs"
    headers = {"Idempotency-Key": "order-42"}
    first = requests.post(url, json={"version_id": ver}, headers=headers, auth=(f"user-{user}", token)).json()
    second = requests.post(url, json={"version_id": ver}, headers=headers, auth=(f"user-{user}", token)).json()
    assert first["run_id"] == second["run_id"]
    assert len(runs.get_runs(org, dep)["entries"]) == 1


def test_a_hanging_handler_is_killed_at_the_timeout(tmp_path):
    from conftest import Sluice
    s = Sluice(tmp_path, env={"SLUICE_RUN_TIMEOUT_SECS": "1", "SLUICE_HEARTBEAT_MS": "200"})
    try:
        org, user, token = s.new_org()
        deployments, runs = clients(s, pat(user, token))
        dep, ver = deploy(deployments, org, SLOW)
        run = runs.create_run(org, dep, ver, retry_count=0)
        done = wait_for(finished(runs, org, dep, run["run_id"]), "the timeout", timeout=30)
        assert done["status"] == "FAILED"
        assert "timeout of 1 s" in done["error"]
    finally:
        s.stop()


HUNGRY = '''
import os

def handler(request, context):
    block = bytearray(int(os.environ["SIZE_MB"]) << 20)
    print("allocated", len(block) >> 20, "MiB")
    return {"ok": True}
'''


def test_a_deployments_limits_bound_its_runs_and_the_servers_still_apply(tmp_path):
    from conftest import Sluice
    s = Sluice(tmp_path, env={"SLUICE_RUN_MEMORY_MB": "1024"})
    try:
        org, user, token = s.new_org()
        deployments, runs = clients(s, pat(user, token))
        tight, tight_ver = deploy(deployments, org, HUNGRY)
        loose, loose_ver = deploy(deployments, org, HUNGRY)
        plain, plain_ver = deploy(deployments, org, HUNGRY)
        out = json.loads(s.cli("deployment", "limits", "--org", org, tight, "--memory-mb", "256"))
        assert out["limits"] == {"memory_mb": 256}, out
        s.cli("deployment", "limits", "--org", org, loose, "--memory-mb", "4096")

        def run(dep, ver, size):
            r = runs.create_run(org, dep, ver, retry_count=0, environment={"SIZE_MB": str(size)})
            return wait_for(finished(runs, org, dep, r["run_id"]), "the run", timeout=60)

        # 400 MiB: over the deployment's 256, under the server's 1024.
        done = run(tight, tight_ver, 400)
        assert done["status"] == "FAILED" and "MemoryError" in done["error"], done
        assert run(plain, plain_ver, 400)["status"] == "SUCCEEDED"
        # 1500 MiB: under the deployment's 4096, over the server's 1024.
        done = run(loose, loose_ver, 1500)
        assert done["status"] == "FAILED" and "MemoryError" in done["error"], done
        assert run(loose, loose_ver, 400)["status"] == "SUCCEEDED"
        # Through the API, limits are not the caller's to change.
        res = requests.patch(f"{s.url}/organizations/{org}/deployments/{tight}", auth=(f"user-{user}", token),
                             json={"description": "x", "limits": {"memory_mb": 999999}})
        assert res.status_code == 200
        assert run(tight, tight_ver, 400)["status"] == "FAILED"
        bad = subprocess.run([BIN, "deployment", "limits", "--org", org, tight, "--cpu-seconds", "0",
                              *s.store_args()], capture_output=True, text=True, env=s.env)
        assert bad.returncode != 0 and "1 or more" in bad.stderr
    finally:
        s.stop()


def test_zip_archives_are_accepted_too(sluice):
    import io
    import zipfile
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep = deployments.create_deployment(org, "zipped")["deployment_id"]
    ver = deployments.create_deployment_version(org, dep, "1", "pkg.entry:run", "python")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/entry.py", "def run(request, context):\n    print('zipped ok')\n")
    assert requests.put(ver["upload_url"], data=buf.getvalue()).status_code == 200
    run = runs.create_run(org, dep, ver["version_id"], retry_count=0)
    done = wait_for(finished(runs, org, dep, run["run_id"]), "the run")
    assert done["status"] == "SUCCEEDED", done
    assert "zipped ok" in [e["message"] for e in runs.get_run_logs(org, dep, run["run_id"])["events"]]


def test_an_upload_url_is_good_once_and_bad_archives_are_refused_at_upload(sluice):
    import io
    import zipfile
    org, user, token = sluice.new_org()
    deployments, runs = clients(sluice, pat(user, token))
    dep = deployments.create_deployment(org, "once")["deployment_id"]
    ver = deployments.create_deployment_version(org, dep, "0.0.1", "main:handler", "python")
    first = code_archive({"main.py": "def handler(request, context):\n    print('original code')\n"})
    assert requests.put(ver["upload_url"], data=first).status_code == 200
    # The same URL again, with other code: refused, and the code stays.
    again = requests.put(ver["upload_url"], data=code_archive({
        "main.py": "def handler(request, context):\n    print('replaced code')\n"}))
    assert again.status_code == 409, again.text
    assert "new version" in again.json()["error_description"], again.text
    run = runs.create_run(org, dep, ver["version_id"], retry_count=0)
    done = wait_for(finished(runs, org, dep, run["run_id"]), "the run")
    assert done["status"] == "SUCCEEDED", done
    lines = [e["message"] for e in runs.get_run_logs(org, dep, run["run_id"])["events"]]
    assert "original code" in lines and "replaced code" not in lines, lines
    link = deployments.download_deployment_version(org, dep, ver["version_id"])["download_uri"]
    assert requests.get(link).content == first

    # Archives that climb out of their folder are refused at upload, not at run.
    ver2 = deployments.create_deployment_version(org, dep, "0.0.2", "main:handler", "python")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("main.py", "def handler(request, context):\n    pass\n")
        z.writestr("../../escape.py", "x = 1\n")
    bad = requests.put(ver2["upload_url"], data=buf.getvalue())
    assert bad.status_code == 400 and "outside" in bad.json()["error_description"], bad.text
    # Refused, so the URL is still good for a sound archive.
    assert requests.put(ver2["upload_url"], data=first).status_code == 200


def test_bad_text_is_refused_in_the_json_envelope_and_nothing_is_stored(sluice):
    org, user, token = sluice.new_org()
    s = requests.Session()
    s.auth = (f"user-{user}", token)
    base = f"{sluice.url}/organizations/{org}"

    def envelope(r, status):
        assert r.status_code == status, (r.status_code, r.text[:300])
        body = r.json()
        assert set(body) == {"error", "error_description"}, body
        assert "database" not in body["error_description"].lower(), body
        return body["error_description"]

    # A NUL in a name, in a nested value, in a channel's name: 400 naming the field.
    assert "name" in envelope(s.post(f"{base}/deployments", json={"name": "a\u0000b"}), 400)
    assert "body.default_environment.K" in envelope(
        s.post(f"{base}/deployments", json={"name": "ok", "default_environment": {"K": "x\u0000"}}), 400)
    assert "name" in envelope(s.post(f"{base}/channels", json={"name": "in\u0000", "storage_type": "datalake"}), 400)
    # Too long: a 1 MB name is a 413 (the body), a 300-character one a 400.
    envelope(s.post(f"{base}/deployments", json={"name": "n" * (1 << 20)}), 413)
    assert "255" in envelope(s.post(f"{base}/deployments", json={"name": "n" * 300}), 400)
    # axum's own refusals come in the envelope too.
    bad_path = s.get(f"{base}/deployments/%FF%FE/runs")
    assert 400 <= bad_path.status_code < 500
    envelope(bad_path, bad_path.status_code)
    duplicated = s.get(f"{base}/deployments", params=[("limit", "1"), ("limit", "x")])
    if duplicated.status_code >= 400:
        envelope(duplicated, duplicated.status_code)
    envelope(s.post(f"{base}/deployments", data=b"{not json", headers={"Content-Type": "application/json"}), 400)
    # Nothing of it was stored.
    assert s.get(f"{base}/deployments").json()["entries"] == []
