"""Fuzzing the faces against their own descriptions, on SQLite and on
PostgreSQL: schemathesis reads `/openapi.json` (built from the router's
table) and sends every REST operation schema-valid and schema-breaking
requests, authenticated, with the ids of real objects (a deployment with a
version and a finished run, a channel with a file, a trigger, an API source
and a failed run of it) so the requests reach past the 404. Then it
fuzzes the GraphQL face with queries generated from its introspected
schema (hypothesis-graphql, valid and schema-breaking arguments). The
test fails on any 5xx, any answer the document does not describe (status,
content type, shape), a schema-breaking request the server takes, a route
that ignores missing credentials, a GraphQL error that is not the
caller's, and any panic in the server's log.

The bounded sizes (`SLUICE_FUZZ_EXAMPLES`, default 15 per operation) keep
it to about a minute per store; a larger number runs the same test
longer."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from conftest import SECRETS, deployment_of, wait_for

EXAMPLES = os.environ.get("SLUICE_FUZZ_EXAMPLES", "15")
ST = str(Path(sys.executable).parent / "st")


def objects(sluice, tmp_path):
    """Real objects of one organization, and the credentials to reach them."""
    session, dep_url, ver = deployment_of(sluice, "def handler(request, context):\n    print('fuzz')\n    return {}\n")
    org = dep_url.split("/")[4]
    dep = dep_url.rsplit("/", 1)[1]
    user, token = session.auth
    run = session.post(f"{dep_url}/runs", json={"version_id": ver, "input_data": {"a": 1}}).json()["run_id"]
    wait_for(lambda: session.get(f"{dep_url}/runs/{run}").json()["status"] == "SUCCEEDED", "the run to end")
    channel = session.post(f"{sluice.url}/organizations/{org}/channels",
                           json={"name": "fuzz", "storage_type": "datalake"}).json()["channel"]["channel_id"]
    file = session.post(f"{sluice.url}/channels/{channel}/upload", data=b"a,b\n1,2\n",
                        headers={"Content-Type": "text/csv", "x-abeja-meta-filename": "a.csv"}).json()["file_id"]
    tri = session.post(f"{dep_url}/triggers", json={
        "version_id": ver, "input_service_name": "datalake", "input_service_id": channel}).json()["trigger_id"]
    source = tmp_path / "shop.json"
    source.write_text(json.dumps({"name": "shop", "client": {"base_url": "http://127.0.0.1:9"},
                                  "resources": ["orders"]}))
    sluice.cli("source", "create", "--file", str(source), "--org", org)
    api_run = session.post(f"{sluice.url}/organizations/{org}/sources/shop/runs", json={}).json()["id"]
    wait_for(lambda: session.get(f"{sluice.url}/organizations/{org}/api-runs/{api_run}").json()["status"]
             in ("FAILED", "SUCCEEDED"), "the API run to end")
    key = sluice.cli_json("apikey", "create", "--org", org)["api_key"]
    SECRETS.add(key)
    return {
        "user": user, "token": token, "jwt": sluice.jwt(org), "key": key,
        "path": {"org": org, "dep": dep, "ver": ver, "run": run, "channel": channel, "file": file,
                 "tri": tri, "source": "shop", "api_run": str(api_run)},
    }


def config(tmp_path, o):
    lines = ["[parameters]"]
    lines += [f'"path.{k}" = "{v}"' for k, v in o["path"].items()]
    lines += ["", "[auth.openapi.basic]", f'username = "{o["user"]}"', f'password = "{o["token"]}"',
              "", "[auth.openapi.bearer]", f'bearer = "{o["jwt"]}"',
              "", "[generation]", "allow-x00 = true"]
    path = tmp_path / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def schemathesis(tmp_path, cfg, location, *args):
    out = subprocess.run(
        [ST, "--config-file", str(cfg), "run", location, "-n", EXAMPLES, "--no-shrink", "-w", "2",
         "--seed", "20261130", "--output-sanitize", "true", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=900)
    text = out.stdout + out.stderr
    (tmp_path / f"schemathesis-{len(list(tmp_path.glob('schemathesis-*')))}.out").write_text(text)
    return out.returncode, text


def counts(text):
    tested = re.search(r"Tested: (\d+)", text)
    generated = re.search(r"(\d+) generated", text)
    return (int(tested.group(1)) if tested else 0, int(generated.group(1)) if generated else 0)


# Errors a GraphQL answer may carry for a query the fuzzer made up: the
# caller's mistake (bad input, an id that names nothing, another tenant's
# object), never the server's.
CLIENT_ERRORS = {"BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED",
                 "NOT_FOUND", "FORBIDDEN", "CONFLICT", "PAYLOAD_TOO_LARGE"}
GRAPHQL_EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "15"))


def graphql_fuzz(url, key):
    """Every root field of the Arize-style face, from its introspected
    schema (as a GraphQL tool reads it, with an API key), with valid and
    with schema-breaking arguments (hypothesis-graphql): no 5xx, an answer
    of `data` and/or `errors`, no error but the caller's, no null in a
    non-null field. Answers (root fields, queries sent)."""
    from graphql import build_client_schema, get_introspection_query
    from hypothesis import HealthCheck, given, settings
    from hypothesis_graphql import Mode, from_schema

    headers = {"x-api-key": key}
    answer = requests.post(url + "/graphql", json={"query": get_introspection_query()},
                           headers=headers, timeout=30).json()
    assert "errors" not in answer, answer
    schema = build_client_schema(answer["data"])
    roots = [(t, name) for t in (schema.query_type, schema.mutation_type) if t for name in t.fields]
    sent = 0
    for _, name in roots:
        for mode in (Mode.POSITIVE, Mode.NEGATIVE):
            @settings(max_examples=GRAPHQL_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(from_schema(schema, fields=[name], mode=mode))
            def one(query):
                nonlocal sent
                sent += 1
                res = requests.post(url + "/graphql", json={"query": query}, headers=headers, timeout=30)
                assert res.status_code < 500, (query, res.status_code, res.text[:500])
                body = res.json()
                assert isinstance(body, dict) and ("data" in body or "errors" in body), (query, body)
                for error in body.get("errors") or []:
                    code = (error.get("extensions") or {}).get("code")
                    assert code in CLIENT_ERRORS, (query, error)
                    assert "Cannot return null for non-nullable" not in error["message"], (query, error)
            one()
    return len(roots), sent


def test_every_rest_operation_and_the_graphql_schema_survive_fuzzing(sluice, tmp_path):
    doc = requests.get(sluice.url + "/openapi.json").json()
    operations = sum(len(item) for item in doc["paths"].values())
    assert operations >= 56, operations
    o = objects(sluice, tmp_path)
    cfg = config(tmp_path, o)

    # Every check but positive_data_acceptance: the server's rules for
    # input go past what JSON Schema says (no NUL character in any string,
    # times and tokens in their formats, a source file's resources), so a
    # schema-valid request may rightly be refused with a 400. The DELETEs
    # run last, so the other operations reach the real objects.
    checks = ["--checks", "all", "--exclude-checks", "positive_data_acceptance",
              "--phases", "examples,coverage,fuzzing"]
    tested = generated = 0
    for selection in (["--exclude-method", "DELETE"], ["--include-method", "DELETE"]):
        code, text = schemathesis(tmp_path, cfg, sluice.url + "/openapi.json", *checks, *selection)
        assert code == 0, text[-6000:]
        t, g = counts(text)
        tested, generated = tested + t, generated + g
    print(f"REST fuzz: {tested} operations, {generated} requests")
    # (all but GET /openapi.json, which schemathesis leaves out)
    assert tested == operations - 1, text[-3000:]
    assert generated >= operations * 5, text[-3000:]

    fields, queries = graphql_fuzz(sluice.url, o["key"])
    print(f"GraphQL fuzz: {fields} root fields, {queries} queries")
    assert fields >= 10 and queries >= fields * 2 * GRAPHQL_EXAMPLES * 0.8, (fields, queries)

    log = (tmp_path / "serve.log").read_text()
    assert "panicked" not in log, log[-3000:]
