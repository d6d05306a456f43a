"""Tenant isolation on every route, generated from the router itself
(`sluice routes --json`) and from the GraphQL schema: a route or an
operation added later without a case here fails this test.

Two organizations, A and B; A has two spaces. Every REST route that takes
credentials is called with A's ids and B's credentials (personal access
token and JWT), with no credentials and with a forged one: each answers
401, 403 or 404, and A's data is the same afterwards. Every GraphQL query
field, node type and mutation is tried with B's key and with a key of A's
other space."""
import base64
import json
import re
import subprocess

import requests

from conftest import BIN, code_archive, wait_for

HANDLER = '''
def handler(request, context):
    print("ran", context["run_id"])
    return {"ok": True}
'''

# A valid body for each route that takes one, so that a refusal is the
# authorization's, not the body's.
BODIES = {
    ("POST", "/organizations/{org}/deployments"): {"name": "intruder"},
    ("PATCH", "/organizations/{org}/deployments/{dep}"): {"description": "changed by B"},
    ("POST", "/organizations/{org}/deployments/{dep}/versions"):
        {"version": "9.9.9", "handler": "main:handler", "image": "abeja-inc/all-cpu:19.10"},
    ("POST", "/organizations/{org}/deployments/{dep}/runs"): {"version_id": "{ver}"},
    ("POST", "/organizations/{org}/deployments/{dep}/runs/{run}/cancel"): {},
    ("POST", "/organizations/{org}/channels"): {"name": "intruder", "storage_type": "datalake"},
    ("PATCH", "/organizations/{org}/channels/{channel}"): {"name": "changed by B"},
    ("POST", "/organizations/{org}/channels/{channel}/archive"): {},
    ("POST", "/organizations/{org}/channels/{channel}/unarchive"): {},
    ("PUT", "/channels/{channel}/{file}/metadata"): {"x-abeja-meta-label": "changed by B"},
    ("POST", "/organizations/{org}/deployments/{dep}/triggers"):
        {"version_id": "{ver}", "input_service_name": "datalake", "input_service_id": "{channel}"},
    # The Tailer-style action API: A's account, a configuration id.
    ("POST", "/v1/dag/launch"): {"action": "launch_job", "account": "000777", "environment": "DEV",
                                 "configuration_type": "table-to-table", "configuration_id": "x_DEV"},
    ("POST", "/v1/dag/status"): {"action": "get_last_status", "account": "000777", "environment": "DEV",
                                 "configuration_type": "table-to-table", "configuration_id": "x_DEV"},
    ("POST", "/v1/configuration/status"): {"action": "set_configuration_status", "activated": False,
                                           "archived": True, "account": "000777", "environment": "DEV",
                                           "configuration_type": "table-to-table",
                                           "configuration_id": "x_DEV"},
    ("POST", "/v1/workflow/status"): {"action": "reset_workflow_status", "account": "000777",
                                      "environment": "DEV", "configuration_type": "workflow",
                                      "configuration_id": "x"},
}
# HTTP API sources: A's source file (its name kept), a run's type.
API_SOURCE = {"name": "shop", "client": {"base_url": "http://127.0.0.1:9"}, "resources": ["orders"]}
BODIES.update({
    ("POST", "/organizations/{org}/sources"): dict(API_SOURCE, name="intruder"),
    ("PUT", "/organizations/{org}/sources/{source}"): API_SOURCE,
    ("POST", "/organizations/{org}/sources/{source}/runs"): {"type": "destructive"},
    ("POST", "/organizations/{org}/api-runs/{api_run}/cancel"): {},
    ("POST", "/organizations/{org}/api-runs/{api_run}/retry"): {},
})
RAW_BODIES = {("POST", "/channels/{channel}/upload"): b"file from B"}
# Routes answered without credentials: what a forged token gets.
PUBLIC = {
    ("GET", "/healthz"): 200,
    ("GET", "/readyz"): 200,
    # Counts by kind, status, queue and route template: no organization's data.
    ("GET", "/metrics"): 200,
    # The API's description: routes and shapes, no organization's data.
    ("GET", "/openapi.json"): 200,
    ("PUT", "/uploads/{token}"): (400, 401, 403, 404),
    ("GET", "/downloads/{token}"): (400, 401, 403, 404),
    ("GET", "/files/{token}"): (400, 401, 403, 404),
    ("GET", "/graphql"): 200,
    ("GET", "/graphql/assets/{name}"): 404,
}
# Tried through the GraphQL part of this test.
GRAPHQL = {("POST", "/graphql")}
# The web console: pages answered without a session (a sign-in page, the
# assets, the home page's redirect), and what a form post of "x" gets.
PAGES_PUBLIC = {
    ("GET", "/"): (303,),
    ("GET", "/signin"): (200,),
    ("POST", "/signin"): (400, 401, 415, 422),
    ("GET", "/assets/console.css"): (200,),
    ("GET", "/assets/console.js"): (200,),
}


def console_session(s, user, token):
    c = requests.Session()
    r = c.post(s.url + "/signin", data={"user": user, "token": token}, allow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get(s.url + "/sources").text
    return c, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def try_page(s, r, ids, a_session, b_session):
    """A console page with A's ids: refused without a session (401, the
    sign-in page), not found with B's session, answered for A."""
    key = (r["method"], r["path"])
    path = fill(r["path"], ids)
    if r["public"]:
        assert key in PAGES_PUBLIC, f"{key}: a public page with no case here"
        res = requests.request(r["method"], s.url + path, data=b"x", allow_redirects=False, timeout=30)
        assert res.status_code in PAGES_PUBLIC[key], (key, res.status_code)
        return 0
    if key == ("POST", "/signout"):
        return 0  # B signing B out is B's own business
    res = requests.request(r["method"], s.url + path, data={"csrf": "x", "type": "incremental"},
                           headers={"Authorization": f"Bearer {s.jwt(ids['org'])}"}, allow_redirects=False,
                           timeout=30)
    assert res.status_code == 401 and 'action="/signin"' in res.text, (key, "no session", res.status_code)
    assert res.headers["Content-Type"].startswith("text/html"), key
    b, b_csrf = b_session
    res = b.request(r["method"], s.url + path, data={"csrf": b_csrf, "type": "incremental"},
                    allow_redirects=False, timeout=30)
    if "{" in r["path"]:
        assert res.status_code == 404, (key, "B's session", res.status_code, res.text[:300])
    else:
        assert res.status_code == 200 and ids["source"] not in res.text, (key, "B's session")
    if r["method"] == "GET":
        a, _ = a_session
        res = a.get(s.url + path, timeout=30)
        assert res.status_code == 200, (key, "A's session", res.status_code)
    return 2


def fill(path, ids):
    for k, v in ids.items():
        path = path.replace("{" + k + "}", v)
    assert "{" not in path, f"{path}: no id for it in this test"
    return path


def fill_body(body, ids):
    if body is None:
        return None
    text = json.dumps(body)
    for k, v in ids.items():
        text = text.replace('"{' + k + '}"', json.dumps(v))
    return json.loads(text)


def basic(user, token):
    return {"Authorization": "Basic " + base64.b64encode(f"user-{user}:{token}".encode()).decode()}


def snapshot(s, ids, a):
    """A's data as A reads it."""
    org, dep = ids["org"], ids["dep"]
    out = {}
    for path in (f"/organizations/{org}/deployments", f"/organizations/{org}/deployments/{dep}",
                 f"/organizations/{org}/deployments/{dep}/versions",
                 f"/organizations/{org}/deployments/{dep}/runs/{ids['run']}",
                 f"/organizations/{org}/channels/{ids['channel']}",
                 f"/channels/{ids['channel']}",
                 f"/channels/{ids['channel']}/{ids['file']}",
                 f"/organizations/{org}/deployments/{dep}/triggers",
                 f"/organizations/{org}/sources/{ids['source']}",
                 f"/organizations/{org}/sources/{ids['source']}/runs",
                 f"/organizations/{org}/api-runs/{ids['api_run']}"):
        res = requests.get(s.url + path, headers=a, timeout=30)
        assert res.status_code == 200, (path, res.text)
        body = res.json()
        # Pre-signed URLs are minted anew on each read.
        for f in [body] + body.get("files", []):
            for key in ("download_uri", "url_expires_on"):
                f.pop(key, None)
        out[path] = body
    return out


def gql(s, key, query, variables=None):
    r = requests.post(s.url + "/graphql", json={"query": query, "variables": variables or {}},
                      headers={"x-api-key": key}, timeout=30)
    return r.status_code, r.json()


def test_every_route_refuses_another_tenant(sluice, tmp_path):
    a_org, a_user, a_token = sluice.new_org()
    b_org, b_user, b_token = sluice.new_org()
    a = basic(a_user, a_token)
    sluice.cli("org", "account", a_org, "000777")
    # A's things: a deployment with code, a finished run, a channel with a
    # file, a trigger.
    res = requests.post(f"{sluice.url}/organizations/{a_org}/deployments", json={"name": "a"}, headers=a)
    dep = res.json()["deployment_id"]
    ver = requests.post(f"{sluice.url}/organizations/{a_org}/deployments/{dep}/versions", headers=a,
                        json={"version": "0.0.1", "handler": "main:handler",
                              "image": "abeja-inc/all-cpu:19.10"}).json()
    assert requests.put(ver["upload_url"], data=code_archive({"main.py": HANDLER})).status_code == 200
    run = requests.post(f"{sluice.url}/organizations/{a_org}/deployments/{dep}/runs", headers=a,
                        json={"version_id": ver["version_id"]}).json()
    wait_for(lambda: requests.get(f"{sluice.url}/organizations/{a_org}/deployments/{dep}/runs/{run['run_id']}",
                                  headers=a).json()["status"] == "SUCCEEDED", "A's run")
    channel = requests.post(f"{sluice.url}/organizations/{a_org}/channels", headers=a,
                            json={"name": "a", "storage_type": "datalake"}).json()["channel"]["channel_id"]
    file = requests.post(f"{sluice.url}/channels/{channel}/upload", data=b"A's data", headers=dict(
        a, **{"Content-Type": "text/plain"})).json()["file_id"]
    tri = requests.post(f"{sluice.url}/organizations/{a_org}/deployments/{dep}/triggers", headers=a,
                        json={"version_id": ver["version_id"], "input_service_name": "datalake",
                              "input_service_id": channel}).json()["trigger_id"]
    # An HTTP API source of A's, and its run (it fails: nothing answers on
    # port 9), ended so that nothing changes under the snapshot.
    res = requests.post(f"{sluice.url}/organizations/{a_org}/sources", json=API_SOURCE, headers=a)
    assert res.status_code == 201, res.text
    api_run = requests.post(f"{sluice.url}/organizations/{a_org}/sources/shop/runs", headers=a,
                            json={}).json()["id"]
    wait_for(lambda: requests.get(f"{sluice.url}/organizations/{a_org}/api-runs/{api_run}",
                                  headers=a).json()["status"] == "FAILED", "A's API run")
    # A table import job of A's (its warehouse has no connector, so its
    # query fails at once) and a workflow of the action API.
    a_key = sluice.cli_json("apikey", "create", "--org", a_org)["api_key"]
    _, body = gql(sluice, a_key, "{ account { organizations { edges { node { spaces { edges { node "
                                 "{ id } } } } } } } }")
    space = body["data"]["account"]["organizations"]["edges"][0]["node"]["spaces"]["edges"][0]["node"]["id"]
    _, body = gql(sluice, a_key, """mutation ($input: CreateTableImportJobInput!) {
        createTableImportJob(input: $input) { tableImportJob { jobId } } }""", {"input": {
        "spaceId": space, "modelName": "churn", "modelType": "score_categorical",
        "modelEnvironmentName": "production", "tableStore": "BigQuery",
        "bigQueryTableConfig": {"projectId": "p", "dataset": "d", "tableName": "t"},
        "schema": {"predictionId": "id", "timestamp": "ts"}}})
    job = body["data"]["createTableImportJob"]["tableImportJob"]["jobId"]
    subprocess.run([BIN, "job", "run", job, "--org", a_org, *sluice.store_args()], env=sluice.env,
                   capture_output=True)
    query = sluice.cli_json("job", "queries", job, "--org", a_org)[0]["id"]
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps({
        "$schema": "http://jsonschema.tailer.ai/schema/workflow-veditor",
        "configuration_type": "workflow", "configuration_id": "000777-fan-in", "version": "2",
        "environment": "DEV", "account": "000777", "gcp_project_id": "acme",
        "authorized_job_ids": ["gbq-to-gbq|000777_JA_DEV"],
        "target_dag": {"configuration_type": "table-to-table", "configuration_id": "000777_JT_DEV"}}))
    sluice.cli("config", "deploy", str(workflow), "--org", a_org)
    forged = base64.urlsafe_b64encode(b"upload:" + ver["version_id"].encode() + b":99999999999").decode()
    ids = {"org": a_org, "dep": dep, "ver": ver["version_id"], "run": run["run_id"], "channel": channel,
           "file": file, "tri": tri, "token": forged.rstrip("=") + ".c2lnbmF0dXJl",
           "name": "nope.js", "source": "shop", "api_run": str(api_run), "job": job, "query": query,
           "configuration": "000777-fan-in"}
    before = snapshot(sluice, ids, a)

    strangers = {
        "B's personal access token": basic(b_user, b_token),
        "B's JWT": {"Authorization": f"Bearer {sluice.jwt(b_org)}"},
        "no credentials": {},
        "a forged JWT": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJvcmciOiIxIn0.c2ln"},
    }
    routes = json.loads(subprocess.run([BIN, "routes", "--json"], check=True, capture_output=True,
                                       text=True).stdout)
    assert len(routes) >= 40, routes
    tried = 0
    a_session = console_session(sluice, a_user, a_token)
    b_session = console_session(sluice, b_user, b_token)
    for r in routes:
        key = (r["method"], r["path"])
        if key in GRAPHQL:
            continue
        if r.get("page"):
            tried += try_page(sluice, r, ids, a_session, b_session)
            continue
        if r["public"]:
            assert key in PUBLIC, f"{key}: a public route with no case here"
            res = requests.request(r["method"], sluice.url + fill(r["path"], ids), data=b"x", timeout=30)
            want = PUBLIC[key]
            assert res.status_code in (want if isinstance(want, tuple) else (want,)), (key, res.status_code)
            continue
        path = fill(r["path"], ids)
        body = fill_body(BODIES.get(key), ids)
        raw = RAW_BODIES.get(key)
        if r["method"] in ("POST", "PUT", "PATCH"):
            assert body is not None or raw is not None, f"{key}: no body for it in this test"
        for who, headers in strangers.items():
            res = requests.request(r["method"], sluice.url + path, json=body if raw is None else None,
                                   data=raw, headers=dict(headers, **({"Content-Type": "text/plain"}
                                                                       if raw else {})), timeout=30)
            assert res.status_code in (401, 403, 404), (key, who, res.status_code, res.text)
            assert res.headers["Content-Type"].startswith("application/json"), (key, who)
            tried += 1
        if r["method"] == "GET":
            # The ids are A's real ones: A itself is answered.
            res = requests.get(sluice.url + path, headers=a, timeout=30)
            assert res.status_code == 200, (key, "A's own credentials", res.status_code, res.text)
    assert tried >= 4 * 30
    assert snapshot(sluice, ids, a) == before, "B changed something of A's"
    # Nothing was made for B either.
    b = basic(b_user, b_token)
    assert requests.get(f"{sluice.url}/organizations/{b_org}/deployments", headers=b).json()["entries"] == []


def test_every_graphql_operation_refuses_another_organization_and_another_space(sluice):
    a_org = sluice.new_org()[0]
    b_org = sluice.new_org()[0]
    sluice.cli_json("space", "create", "--org", a_org, "Second")
    raw = {s["name"]: s["id"] for s in sluice.cli_json("space", "list", "--org", a_org)}
    first_name = next(n for n in raw if n != "Second")
    a_key = sluice.cli_json("apikey", "create", "--org", a_org)["api_key"]
    b_key = sluice.cli_json("apikey", "create", "--org", b_org)["api_key"]
    second_key = sluice.cli_json("apikey", "create", "--org", a_org, "--space", raw["Second"])["api_key"]

    _, body = gql(sluice, a_key, "{ account { organizations { edges { node { id spaces { edges { node "
                                 "{ id name } } } } } } } }")
    org_node = body["data"]["account"]["organizations"]["edges"][0]["node"]
    spaces = {e["node"]["name"]: e["node"]["id"] for e in org_node["spaces"]["edges"]}
    _, body = gql(sluice, a_key, """mutation ($input: CreateTableImportJobInput!) {
        createTableImportJob(input: $input) { tableImportJob { id jobId } } }""", {"input": {
        "spaceId": spaces[first_name], "modelName": "churn", "modelType": "score_categorical",
        "modelEnvironmentName": "production", "tableStore": "BigQuery",
        "bigQueryTableConfig": {"projectId": "p", "dataset": "d", "tableName": "t"},
        "schema": {"predictionId": "id", "timestamp": "ts"}}})
    job = body["data"]["createTableImportJob"]["tableImportJob"]
    _, body = gql(sluice, a_key, """query ($id: ID!) { node(id: $id) { ... on Space {
        models(first: 5) { edges { node { id } } } } } }""", {"id": spaces[first_name]})
    model = body["data"]["node"]["models"]["edges"][0]["node"]["id"]
    # A global id of A's for every node type the schema has.
    nodes = {"AccountOrganization": org_node["id"], "Space": spaces[first_name], "Model": model,
             "TableImportJob": job["id"]}
    _, schema = gql(sluice, a_key, """{ __schema { queryType { fields { name } } mutationType {
        fields { name args { name type { ofType { name } } } } } } __type(name: "Node") { possibleTypes { name } } }""")
    types = {t["name"] for t in schema["data"]["__type"]["possibleTypes"]}
    assert types == set(nodes), f"node types without a case here: {types ^ set(nodes)}"
    queries = {f["name"] for f in schema["data"]["__schema"]["queryType"]["fields"]}
    assert queries == {"account", "node"}, f"query fields without a case here: {queries}"

    def unchanged():
        _, b = gql(sluice, a_key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
            jobStatus modelName tableIngestionParameters { refreshIntervalSeconds } queries(first: 5) {
            totalCount } } } }""", {"id": job["id"]})
        return b["data"]["node"]
    before = unchanged()

    for who, key, sees_org in (("organization B", b_key, False), ("A's other space", second_key, True)):
        # node(): nothing of A's outside what the key may see.
        for kind, gid in nodes.items():
            _, body = gql(sluice, key, "query ($id: ID!) { node(id: $id) { id } }", {"id": gid})
            if kind == "AccountOrganization" and sees_org:
                assert body["data"]["node"]["id"] == gid, (who, body)
            else:
                assert body.get("data") and body["data"]["node"] is None, (who, kind, body)
        # account: B sees only B; the space key only its space.
        _, body = gql(sluice, key, "{ account { organizations { edges { node { id spaces { edges { node "
                                   "{ id name } } } } } } } }")
        orgs = body["data"]["account"]["organizations"]["edges"]
        assert len(orgs) == 1, (who, body)
        names = [e["node"]["name"] for e in orgs[0]["node"]["spaces"]["edges"]]
        if sees_org:
            assert orgs[0]["node"]["id"] == org_node["id"] and names == ["Second"], (who, body)
        else:
            seen = {e["node"]["id"] for e in orgs[0]["node"]["spaces"]["edges"]}
            assert orgs[0]["node"]["id"] != org_node["id"] and not seen & set(spaces.values()), (who, body)
        # Every mutation on A's job, or in A's first space.
        for m in schema["data"]["__schema"]["mutationType"]["fields"]:
            name = m["name"]
            inp = MUTATIONS.get(name)
            assert inp is not None, f"{name}: no case for it here"
            inp = json.loads(json.dumps(inp).replace("JOB", job["jobId"]).replace("SPACE", spaces[first_name]))
            input_type = next(a["type"]["ofType"]["name"] for a in m["args"] if a["name"] == "input")
            _, body = gql(sluice, key, f"mutation ($input: {input_type}!) "
                                       f"{{ {name}(input: $input) {{ __typename }} }}", {"input": inp})
            assert body.get("errors"), (who, name, body)
            assert body["errors"][0]["extensions"]["code"] in ("NOT_FOUND", "FORBIDDEN"), (who, name, body)
    assert unchanged() == before


MUTATIONS = {
    "createTableImportJob": {"spaceId": "SPACE", "modelName": "sneaky", "modelType": "score_categorical",
                             "modelEnvironmentName": "production", "tableStore": "BigQuery",
                             "bigQueryTableConfig": {"projectId": "p", "dataset": "d", "tableName": "t"},
                             "schema": {"predictionId": "id", "timestamp": "ts"}},
    "pauseTableImportJob": {"jobId": "JOB"},
    "startTableImportJob": {"jobId": "JOB"},
    "deleteTableImportJob": {"jobId": "JOB"},
    "updateTableIngestionParameters": {"jobId": "JOB", "tableIngestionParameters": {"rowLimit": 5}},
    "updateTableImportJob": {"jobId": "JOB", "tableIngestionParameters": {"refreshIntervalMinutes": 5}},
    "createTriggeredOngoingTableRun": {"jobId": "JOB", "queryStart": "2024-08-20T01:00:00Z",
                                       "queryEnd": "2024-08-20T02:00:00Z"},
}
MUTATIONS["createTriggeredOngoingTableImportJob"] = MUTATIONS["createTableImportJob"]


def test_every_route_refuses_nul_and_oversized_input_in_the_envelope(sluice):
    org, user, token = sluice.new_org()
    a = basic(user, token)
    dep = requests.post(f"{sluice.url}/organizations/{org}/deployments", json={"name": "a"},
                        headers=a).json()["deployment_id"]
    channel = requests.post(f"{sluice.url}/organizations/{org}/channels", headers=a,
                            json={"name": "a", "storage_type": "datalake"}).json()["channel"]["channel_id"]
    routes = json.loads(subprocess.run([BIN, "routes", "--json"], check=True, capture_output=True,
                                       text=True).stdout)
    bad_ids = {"org": org, "dep": dep, "ver": "1%00", "run": "1%00", "channel": channel, "file": "f%00",
               "tri": "t%00", "token": "t%00", "name": "n%00", "source": "s%00", "api_run": "1%00",
               "job": "j%00", "query": "q%00", "configuration": "c%00"}
    nul_ids = {k: "1%00" for k in bad_ids}
    jwt = {"Authorization": f"Bearer {sluice.jwt(org)}"}

    def creds(route):
        # The action API takes a JWT only.
        return jwt if route["path"].startswith("/v1/") else a
    before = snapshot_lists(sluice, org, dep, channel, a)
    checked = 0
    for r in routes:
        key = (r["method"], r["path"])
        if r["path"] in ("/healthz", "/readyz", "/metrics") or key in GRAPHQL or r["path"].startswith("/graphql"):
            continue
        if r.get("page"):
            # The console's pages answer HTML: a NUL in an id is not found
            # there (tried with a session below).
            continue
        for ids in (nul_ids, bad_ids):
            if "%00" not in fill(r["path"], ids):
                continue
            res = requests.request(r["method"], sluice.url + fill(r["path"], ids), headers=creds(r), json={},
                                   timeout=30)
            assert 400 <= res.status_code < 500, (key, res.status_code)
            assert res.headers["Content-Type"].startswith("application/json"), (key, res.text)
            assert "error" in res.json(), (key, res.text)
        body = BODIES.get(key)
        if not body or r["public"]:
            continue  # a route that reads no body
        ids = {"org": org, "dep": dep, "channel": channel, "ver": "1", "run": "1", "file": "f", "tri": "t",
               "source": "shop", "api_run": "1"}
        path = fill(r["path"], ids)
        good = fill_body(body, ids)
        for field in good:
            nul = dict(good, **{field: "a\u0000b"})
            res = requests.request(r["method"], sluice.url + path, headers=creds(r), json=nul, timeout=30)
            assert res.status_code in (400, 404), (key, field, res.status_code, res.text)
            assert res.headers["Content-Type"].startswith("application/json"), (key, res.text)
            if res.status_code == 400:
                assert "NUL" in res.json()["error_description"] or field in res.json()["error_description"], \
                    (key, res.text)
        huge = dict(good, padding="x" * (2 << 20))
        res = requests.request(r["method"], sluice.url + path, headers=creds(r), json=huge, timeout=30)
        assert res.status_code in (404, 413), (key, res.status_code, res.text)
        assert res.headers["Content-Type"].startswith("application/json"), (key, res.text)
        checked += 1
    assert checked >= 8
    # The console's pages with ids: a NUL or a huge id is not found.
    c, form_token = console_session(sluice, user, token)
    for r in routes:
        if r.get("page") and "{" in r["path"]:
            for ids in (nul_ids, {k: "x" * 100_000 for k in nul_ids}):
                res = c.request(r["method"], sluice.url + fill(r["path"], ids),
                                data={"csrf": form_token, "type": "incremental"},
                                allow_redirects=False, timeout=30)
                assert res.status_code in (404, 414, 431), (r["path"], res.status_code)
                checked += 1
    assert snapshot_lists(sluice, org, dep, channel, a) == before, "a refused request stored something"


def snapshot_lists(s, org, dep, channel, a):
    out = {}
    for path in (f"/organizations/{org}/deployments", f"/organizations/{org}/deployments/{dep}/versions",
                 f"/organizations/{org}/deployments/{dep}/runs", f"/organizations/{org}/channels",
                 f"/organizations/{org}/deployments/{dep}/triggers", f"/channels/{channel}"):
        res = requests.get(s.url + path, headers=a, timeout=30)
        assert res.status_code == 200, (path, res.text)
        out[path] = res.json()
    return out
