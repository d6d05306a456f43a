"""The GraphQL face (seed 000) read side, against a running `sluice serve`
on SQLite and PostgreSQL metadata: raw requests for the shapes, and the
public `arize-toolkit` client finding its organization and spaces."""
import pytest
import requests
from arize_toolkit import Client

from conftest import Sluice, fresh_postgres_database, postgres_databases, psql


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    url = fresh_postgres_database() if request.param == "postgres" else None
    s = Sluice(tmp_path, url)
    yield s
    s.stop()


@pytest.fixture
def source():
    with postgres_databases("sluice_gql", count=1) as (url,):
        psql(url, "CREATE TABLE preds (prediction_id bigint, prediction_ts timestamptz, "
                  "feature_a int, changed_at timestamptz)")
        yield url


def gql(s, key, query, variables=None):
    r = requests.post(s.url + "/graphql", json={"query": query, "variables": variables or {}},
                      headers={"x-api-key": key}, timeout=30)
    return r.status_code, r.json()


def make_jobs(s, org, src, tmp_path, n):
    ids = []
    for i in range(n):
        f = tmp_path / f"job{i}.toml"
        f.write_text(f'name = "preds {i}"\nsource = "{src}"\ntable = "preds"\ntarget = "preds_{i}"\n'
                     f'[schema]\npredictionId = "prediction_id"\ntimestamp = "prediction_ts"\n'
                     f'features = "feature_"\nchangeTimestamp = "changed_at"\n')
        ids.append(s.cli_json("job", "create", "--org", org, "--file", str(f))["job"]["id"])
    return ids


def test_a_key_reads_its_organization_spaces_and_jobs(server, source, tmp_path):
    org = server.new_org()[0]
    key = server.cli_json("apikey", "create", "--org", org)["api_key"]
    status, body = gql(server, "wrong", "{ account { organizations { edges { node { id } } } } }")
    assert status == 401 and "invalid API key" in body["errors"][0]["message"]

    jobs = make_jobs(server, org, source, tmp_path, 3)
    status, body = gql(server, key, """{ account { organizations(first: 10) {
        edges { node { id name spaces(first: 10) { edges { node { id name } } } } } } } }""")
    assert status == 200 and "errors" not in body, body
    orgs = body["data"]["account"]["organizations"]["edges"]
    assert len(orgs) == 1
    spaces = orgs[0]["node"]["spaces"]["edges"]
    assert [e["node"]["name"] for e in spaces] == ["default"]
    space_id = spaces[0]["node"]["id"]

    page = """query ($spaceId: ID!, $after: String) { node(id: $spaceId) { ... on Space {
        id name tableJobs(first: 2, after: $after) { totalCount pageInfo { hasNextPage endCursor }
        edges { node { id jobId jobStatus modelName tableStore table
                       totalQueriesPendingCount tableIngestionParameters { refreshIntervalSeconds } } } } } } }"""
    seen, after = [], None
    while True:
        status, body = gql(server, key, page, {"spaceId": space_id, "after": after})
        assert "errors" not in body, body
        conn = body["data"]["node"]["tableJobs"]
        assert conn["totalCount"] == 3
        seen += [e["node"] for e in conn["edges"]]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert sorted(j["jobId"] for j in seen) == sorted(jobs)
    assert {(j["jobStatus"], j["tableStore"], j["table"]) for j in seen} == {("active", "PostgreSQL", "preds")}
    assert seen[0]["tableIngestionParameters"]["refreshIntervalSeconds"] == 3600

    # node() reads a job by its global id; another organization's is not there.
    status, body = gql(server, key, "query ($id: ID!) { node(id: $id) { id ... on TableImportJob { jobId } } }",
                       {"id": seen[0]["id"]})
    assert body["data"]["node"]["jobId"] == seen[0]["jobId"]
    other = server.new_org()[0]
    other_key = server.cli_json("apikey", "create", "--org", other)["api_key"]
    status, body = gql(server, other_key, "query ($id: ID!) { node(id: $id) { id } }", {"id": space_id})
    assert body["data"]["node"] is None

    # Bad input is a GraphQL error, never a 5xx.
    for q, v in [("{ node(id: 5) { id } }", None),
                 ("query ($s: ID!) { node(id: $s) { ... on Space { tableJobs(first: -1) { totalCount } } } }",
                  {"s": space_id}),
                 ("{ account { nope } }", None),
                 ("{" + "account { organizations { edges { node { spaces { edges { node { " * 6 + "id" + " } } } } } } } }" * 6 + "}", None),
                 ("{ account { organizations { edges { node { id " + "name " * 20000 + "} } } } }", None)]:
        status, body = gql(server, key, q, v)
        assert status == 200 and body.get("errors"), (q[:80], status, body)


def test_arize_toolkit_finds_its_organization_and_spaces(server):
    org = server.new_org()[0]
    server.cli_json("space", "create", "--org", org, "Fraud team")
    key = server.cli_json("apikey", "create", "--org", org)["api_key"]
    # No names: the first organization and its first space (the default).
    client = Client(arize_developer_key=key, arize_app_url=server.url)
    assert client.space == "default"
    names = [s["name"] for s in client.get_all_spaces()]
    assert names == ["default", "Fraud team"]
    # By name: the organization's and the space's ids from one query.
    by_name = Client(organization=client.organization, space="Fraud team",
                     arize_developer_key=key, arize_app_url=server.url)
    assert by_name.space_id != client.space_id and by_name.org_id == client.org_id
    # A key for one space sees only that space.
    fraud = next(s for s in client.get_all_spaces() if s["name"] == "Fraud team")
    space = server.cli_json("space", "list", "--org", org)[1]["id"]
    scoped = server.cli_json("apikey", "create", "--org", org, "--space", space)["api_key"]
    only = Client(arize_developer_key=scoped, arize_app_url=server.url)
    assert only.space == "Fraud team" and only.space_id == fraud["id"]
