"""The GraphQL face (Arize-style) read side, against a running `sluice serve`
on SQLite and PostgreSQL metadata: raw requests for the shapes, and the
public `arize-toolkit` client finding its organization and spaces."""
import json
import subprocess

import pytest
import requests
from arize_toolkit import Client

from conftest import BIN, Sluice, fresh_postgres_database, postgres_databases, psql, wait_for


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

    # The core's Bearer token acts for its organization too.
    r = requests.post(server.url + "/graphql", json={"query": "{ account { organizations { edges { node { name } } } } }"},
                      headers={"Authorization": "Bearer " + server.jwt(org)}, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"]["account"]["organizations"]["edges"]) == 1, r.text

    # Bad input is a GraphQL error with a code, never a 5xx.
    for q, v in [("{ node(id: 5) { id } }", None),
                 ("query ($s: ID!) { node(id: $s) { ... on Space { tableJobs(first: -1) { totalCount } } } }",
                  {"s": space_id}),
                 ("{ account { nope } }", None),
                 ("{" + "account { organizations { edges { node { spaces { edges { node { " * 6 + "id" + " } } } } } } } }" * 6 + "}", None),
                 ("{ account { organizations { edges { node { id " + "name " * 20000 + "} } } } }", None)]:
        status, body = gql(server, key, q, v)
        assert status == 200 and body.get("errors"), (q[:80], status, body)
        assert all(e["extensions"]["code"] for e in body["errors"]), body


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


def space_of(s, key):
    _, body = gql(s, key, "{ account { organizations { edges { node { spaces { edges { node { id } } } } } } } }")
    return body["data"]["account"]["organizations"]["edges"][0]["node"]["spaces"]["edges"][0]["node"]["id"]


def jobs_of(s, key, space):
    _, body = gql(s, key, """query ($s: ID!) { node(id: $s) { ... on Space { tableJobs(first: 50) {
        totalCount edges { node { id jobId jobStatus modelName tableStore } } } } } }""", {"s": space})
    return body["data"]["node"]["tableJobs"]


BIGQUERY_INPUT = {
    "spaceId": "space_id", "modelName": "My Test Model", "modelType": "score_categorical",
    "modelEnvironmentName": "production", "tableStore": "BigQuery",
    "bigQueryTableConfig": {"projectId": "test-project-id", "dataset": "test-dataset", "tableName": "test-table"},
    "schema": {"predictionId": "prediction_id", "predictionLabel": "prediction", "timestamp": "prediction_ts",
               "features": "feature_", "actualLabel": "actual", "version": "model_version", "tags": "tag_",
               "changeTimestamp": "partition_timestamp"},
}

SCHEMA_INLINE = """schema : {
predictionId : "prediction_id" ,
predictionLabel : "prediction" ,
timestamp : "prediction_ts" ,
features : "feature_" ,
actualLabel : "actual" ,
version : "model_version" ,
tags : "tag_" ,
changeTimestamp : "partition_timestamp"
}"""

INLINE_CREATE = """mutation {
createTableImportJob(input: {
spaceId : "space_id" ,
modelName : "My Test Model" ,
modelType : score_categorical,
modelEnvironmentName : production,
tableStore : BigQuery,
bigQueryTableConfig : {
projectId : "test-project-id" ,
dataset : "test-dataset" ,
tableName : "test-table"
},
""" + SCHEMA_INLINE


def test_seed_000_operations_as_written(server):
    """Every operation of the Arize-style table importer, as the document shows it (ids replaced)."""
    org = server.new_org()[0]
    key = server.cli_json("apikey", "create", "--org", org)["api_key"]
    space = space_of(server, key)

    # Dry runs (variables, then inline): validated, nothing stored. BigQuery
    # tables cannot be read yet, and the answer says so.
    dry = """mutation dryRunTableImportJob ($input: CreateTableImportJobInput ! ) {
createTableImportJob(input: $input) {
validationResult {
validationStatus
error {
message
}
}
}
}"""
    _, body = gql(server, key, dry, {"input": dict(BIGQUERY_INPUT, spaceId=space, dryRun=True)})
    assert "errors" not in body, body
    result = body["data"]["createTableImportJob"]["validationResult"]
    assert result["validationStatus"] == "FAILURE" and "BigQuery" in result["error"]["message"], body
    _, body = gql(server, key, (INLINE_CREATE + ",\ndryRun : true\n}){\nvalidationResult {\nvalidationStatus\n"
                                "error {\nmessage\n}\n}\n}\n}").replace("space_id", space))
    assert body["data"]["createTableImportJob"]["validationResult"]["validationStatus"] == "FAILURE", body
    assert jobs_of(server, key, space)["totalCount"] == 0

    # Create, with variables and inline, as the seed writes them.
    create = """mutation createTableImportJob ($input: CreateTableImportJobInput ! ) {
createTableImportJob(input: $input) {
tableImportJob {
id
}
}
}"""
    _, body = gql(server, key, create, {"input": dict(BIGQUERY_INPUT, spaceId=space)})
    first = body["data"]["createTableImportJob"]["tableImportJob"]["id"]
    _, body = gql(server, key, (INLINE_CREATE + "\n}){\ntableImportJob {\nid\n}\n}\n}").replace("space_id", space))
    assert "errors" not in body, body
    second = body["data"]["createTableImportJob"]["tableImportJob"]["id"]
    assert second != first
    listed = """query {
node(id: "space_id" ) {
... on Space {
tableJobs(first: 50 ) {
edges {
node {
id
modelName
jobStatus
totalQueriesFailedCount
totalQueriesSuccessCount
}
}
}
}
}
}""".replace("space_id", space)
    _, body = gql(server, key, listed)
    nodes = [e["node"] for e in body["data"]["node"]["tableJobs"]["edges"]]
    assert len(nodes) == 2 and {n["modelName"] for n in nodes} == {"My Test Model"}, body

    # Queries of a job, pause, resume (by global id and by plain jobId).
    _, body = gql(server, key, """query {
node(id: "ID" ) {
... on TableImportJob {
queries(first: 10 ) {
totalCount
edges{
node {
queryId
createdAt
recordsProcessedCount
windowStartTimestamp
windowEndTimestamp
}
}
}
}
}
}""".replace("ID", first))
    # Active and due at once, it may have made its first query (which fails:
    # no BigQuery connector); the count and the page agree either way.
    listed_queries = body["data"]["node"]["queries"]
    assert listed_queries["totalCount"] == len(listed_queries["edges"]) <= 1, body
    for op, want in [("pauseTableImportJob", "inactive"), ("startTableImportJob", "active")]:
        _, body = gql(server, key, f"""mutation {{
{op}(input: {{ jobId : "ID" }}) {{
tableImportJob {{
jobStatus
}}
}}
}}""".replace("ID", first))
        assert body["data"][op]["tableImportJob"]["jobStatus"] == want, body
        _, read = gql(server, key, "query ($id: ID!) { node(id: $id) { ... on TableImportJob { jobStatus } } }",
                      {"id": first})
        assert read["data"]["node"]["jobStatus"] == want, read

    # Ingestion parameters: inputs in minutes and hours, reads in seconds.
    plain = nodes[0]["id"] if nodes[0]["id"] != first else nodes[1]["id"]
    _, body = gql(server, key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob { jobId } } }""",
                  {"id": plain})
    plain_job_id = body["data"]["node"]["jobId"]
    _, body = gql(server, key, """mutation {
updateTableIngestionParameters(input: {
jobId : "job_id" ,
tableIngestionParameters : {
rowLimit : 50000 ,
refreshIntervalMinutes : 60 ,
queryWindowSizeHours : 24
}
}) {
tableImportJob {
id
}
}
}""".replace("job_id", plain_job_id))
    assert body["data"]["updateTableIngestionParameters"]["tableImportJob"]["id"] == plain, body
    _, body = gql(server, key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
        tableIngestionParameters { refreshIntervalSeconds queryWindowSizeSeconds } } } }""", {"id": plain})
    assert body["data"]["node"]["tableIngestionParameters"] == {
        "refreshIntervalSeconds": 3600, "queryWindowSizeSeconds": 86400}
    _, body = gql(server, key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
        tableIngestionParameters { queryWindowSizeSeconds } } } }""", {"id": plain})

    # The schema, through variables.
    _, body = gql(server, key, """mutation updateTableImportJob (
$jobId: ID ! ,
$schema: TableImportSchemaInputType ! ,
$tableIngestionParameters: TableIngestionParametersInputType !
) {
updateTableImportJob(input: {
jobId : $jobId,
schema : $schema,
tableIngestionParameters : $tableIngestionParameters
}) {
tableImportJob {
id
}
}
}""", {"jobId": plain, "schema": dict(BIGQUERY_INPUT["schema"], tags="labels_"),
       "tableIngestionParameters": {"refreshIntervalMinutes": 30}})
    assert body["data"]["updateTableImportJob"]["tableImportJob"]["id"] == plain, body
    _, body = gql(server, key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
        schema { tags } tableIngestionParameters { refreshIntervalSeconds } } } }""", {"id": plain})
    assert body["data"]["node"] == {"schema": {"tags": "labels_"},
                                    "tableIngestionParameters": {"refreshIntervalSeconds": 1800}}, body

    # Event-based: a triggered job on Snowflake, its id, a window run.
    _, body = gql(server, key, """mutation CreateTableJob {
createTriggeredOngoingTableImportJob(input: {
spaceId : "space_id" ,
modelName : "model-name" ,
modelType : score_categorical,
modelEnvironmentName : production,
tableStore : Snowflake,
snowflakeTableConfig : {
accountID : "snowflake-account-id" ,
schema : "snowflake-schema" ,
database : "database-name" ,
tableName : "table-name"
},
schema : {
predictionId : "PRED_ID" ,
predictionLabel : "PRED_LABEL"
timestamp : "TIMESTAMP" ,
featuresList : [],
tagsList : [],
changeTimestamp : "CHANGE_TIMESTAMP" ,
}
}) {
tableImportJob{
jobId
jobStatus
}
space{
id
}
validationResult{
error {
code
message
}
validationStatus
}
}
}""".replace("space_id", space))
    made = body["data"]["createTriggeredOngoingTableImportJob"]
    assert made["tableImportJob"]["jobStatus"] == "active" and made["space"]["id"] == space, body
    assert made["validationResult"]["error"]["code"] == "table_store_not_supported"
    _, body = gql(server, key, """query queryTableJobId {
node(id: "spaceId" ) {
... on Space {
tableJobs(first: 1 ){
edges{
node{
id
jobId
}
}
}
}
}
}""".replace("spaceId", space))
    listed_ids = body["data"]["node"]["tableJobs"]["edges"][0]["node"]
    space_jobs = {e["node"]["id"]: e["node"]["jobId"] for e in jobs_of(server, key, space)["edges"]}
    assert space_jobs.get(listed_ids["id"]) == listed_ids["jobId"], (body, space_jobs)
    _, body = gql(server, key, """mutation TriggerTableRun {
createTriggeredOngoingTableRun(input: {
jobId : "<ID from above query>" ,
queryStart : "2024-08-20T01:00:00Z" , #desired start time for query
queryEnd : "2024-08-20T23:00:00Z" , #desired end time for query
}) {
clientMutationId
}
}""".replace("<ID from above query>", made["tableImportJob"]["jobId"]))
    assert "errors" not in body, body
    # The window run's query was made, and failed saying why (no connector).
    snowflake_gid = next(i for i, j in space_jobs.items() if j == made["tableImportJob"]["jobId"])

    def snowflake_query():
        _, b = gql(server, key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
            queries(first: 5) { edges { node { status windowStartTimestamp windowEndTimestamp error } } } } } }""",
                   {"id": snowflake_gid})
        edges = b["data"]["node"]["queries"]["edges"]
        return edges if edges and edges[0]["node"]["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED") else None
    ended = wait_for(snowflake_query, "the Snowflake window run's query to end")
    q = ended[0]["node"]
    assert len(ended) == 1 and "Snowflake" in (q["error"] or ""), ended

    # Delete.
    _, body = gql(server, key, """mutation {
deleteTableImportJob(input: { jobId : "ID" }) {
tableImportJob {
jobStatus
}
}
}""".replace("ID", first))
    assert body["data"]["deleteTableImportJob"]["tableImportJob"]["jobStatus"] == "deleted"
    assert jobs_of(server, key, space)["totalCount"] == 2

    # Errors say what and where, with a code: unknown job, wrong enum,
    # missing config for the chosen store.
    _, body = gql(server, key, 'mutation { pauseTableImportJob(input: {jobId: "job-0000000000000000"}) '
                               '{ tableImportJob { jobStatus } } }')
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND", body
    _, body = gql(server, key, create, {"input": dict(BIGQUERY_INPUT, spaceId=space, modelType="tabular")})
    assert "tabular" in body["errors"][0]["message"], body
    bad = dict(BIGQUERY_INPUT, spaceId=space, tableStore="Databricks")
    _, body = gql(server, key, create, {"input": bad})
    assert "databricksTableConfig is required" in body["errors"][0]["message"], body
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_arize_toolkit_creates_reads_updates_and_deletes_jobs(server):
    org = server.new_org()[0]
    key = server.cli_json("apikey", "create", "--org", org)["api_key"]
    client = Client(arize_developer_key=key, arize_app_url=server.url)
    schema = {"predictionId": "prediction_id", "timestamp": "prediction_ts", "predictionLabel": "prediction",
              "features": "feature_", "changeTimestamp": "partition_timestamp"}
    made = []
    for i in range(12):
        job = client.create_table_import_job(
            table_store="BigQuery", model_name=f"model {i}", model_type="score_categorical",
            model_schema=schema,
            bigquery_table_config={"projectId": "p", "dataset": "d", "tableName": f"t{i}"})
        assert job["jobStatus"] == "active"
        made.append(job["jobId"])
    every = client.get_all_table_import_jobs()
    assert sorted(j["jobId"] for j in every) == sorted(made), "twelve, across two pages of ten"
    one = client.get_table_import_job(made[3])
    assert (one["jobId"], one["tableStore"], one["projectId"], one["dataset"]) == (made[3], "BigQuery", "p", "d")
    assert one["schema"]["predictionId"] == "prediction_id"
    updated = client.update_table_import_job(made[3], job_status="inactive", refresh_interval=15)
    assert updated["jobStatus"] == "inactive"
    again = client.get_table_import_job(made[3])
    assert again["tableIngestionParameters"]["refreshIntervalSeconds"] == 900
    assert client.delete_table_import_job(made[3]) is True
    assert len(client.get_all_table_import_jobs()) == 11


def test_a_postgres_job_over_graphql_runs_pauses_starts_reruns_a_window_and_is_deleted(server, tmp_path):
    import time
    with postgres_databases("sluice_gql_e2e", count=1) as (src,):
        psql(src, "CREATE TABLE preds (prediction_id bigint, prediction_ts timestamptz, prediction text, "
                  "feature_a int, changed_at timestamptz)")
        psql(src, "INSERT INTO preds SELECT g, timestamptz '2026-01-01' + g * interval '1 min', 'yes', g, "
                  "timestamptz '2026-01-01' + g * interval '1 min' FROM generate_series(1, 500) g")
        org = server.new_org()[0]
        key = server.cli_json("apikey", "create", "--org", org)["api_key"]
        space = space_of(server, key)
        create = """mutation ($input: CreateTableImportJobInput!) { createTableImportJob(input: $input) {
            tableImportJob { id jobId tableStore } validationResult { validationStatus error { code message } } } }"""
        inp = {"spaceId": space, "modelName": "Churn", "modelType": "score_categorical",
               "modelEnvironmentName": "production", "tableStore": "PostgreSQL",
               "postgresTableConfig": {"url": src, "tableName": "preds"},
               "schema": {"predictionId": "prediction_id", "timestamp": "prediction_ts",
                          "predictionLabel": "prediction", "features": "feature_",
                          "changeTimestamp": "changed_at"},
               "tableIngestionParameters": {"rowLimit": 300}}
        # Not a source of this organization until an administrator says so.
        _, body = gql(server, key, create, {"input": dict(inp, dryRun=True)})
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        assert "sluice source add" in body["errors"][0]["message"], body
        server.cli("source", "add", "--org", org, "predictions", src)
        _, body = gql(server, key, create, {"input": dict(inp, dryRun=True)})
        assert body["data"]["createTableImportJob"]["validationResult"]["validationStatus"] == "SUCCESS", body
        assert body["data"]["createTableImportJob"]["tableImportJob"] is None
        _, body = gql(server, key, create, {"input": dict(inp, schema=dict(inp["schema"], actualLabel="nope"),
                                                          dryRun=True)})
        assert body["data"]["createTableImportJob"]["validationResult"]["error"]["code"] == "column_not_found"
        _, body = gql(server, key, create, {"input": inp})
        job = body["data"]["createTableImportJob"]["tableImportJob"]
        assert job["tableStore"] == "PostgreSQL", body

        def queries():
            _, b = gql(server, key, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
                totalQueriesSuccessCount queries(first: 50) { totalCount edges { node {
                queryId status recordsProcessedCount windowStartTimestamp windowEndTimestamp } } } } } }""",
                       {"id": job["id"]})
            return b["data"]["node"]

        # The scheduler's first query (300 rows: the row limit).
        first = wait_for(lambda: queries()["totalQueriesSuccessCount"] == 1 and queries(), "the first query")
        q = first["queries"]["edges"][0]["node"]
        assert (q["status"], q["recordsProcessedCount"]) == ("SUCCEEDED", 300) and q["windowEndTimestamp"]
        # Paused, and due all the while (its next query long past): no
        # query for ten scheduler polls; started again, it picks up.
        _, body = gql(server, key, 'mutation ($j: ID!) { pauseTableImportJob(input: {jobId: $j}) '
                                   '{ tableImportJob { jobStatus } } }', {"j": job["jobId"]})
        assert body["data"]["pauseTableImportJob"]["tableImportJob"]["jobStatus"] == "inactive", body
        server.store_sql(f"UPDATE import_jobs SET next_query_at = 1 WHERE id = '{job['jobId']}'")
        time.sleep(2)
        assert queries()["queries"]["totalCount"] == 1
        _, body = gql(server, key, 'mutation ($j: ID!) { startTableImportJob(input: {jobId: $j}) '
                                   '{ tableImportJob { jobStatus } } }', {"j": job["id"]})
        assert body["data"]["startTableImportJob"]["tableImportJob"]["jobStatus"] == "active"
        wait_for(lambda: queries()["totalQueriesSuccessCount"] == 2, "the query after start")
        assert queries()["queries"]["edges"][0]["node"]["recordsProcessedCount"] == 200
        # A window run by hand.
        _, body = gql(server, key, """mutation ($j: ID!) { createTriggeredOngoingTableRun(input: {jobId: $j,
            queryStart: "2026-01-01T01:00:00Z", queryEnd: "2026-01-01T02:00:00Z"}) { queryId } }""",
                      {"j": job["jobId"]})
        assert "errors" not in body, body
        wait_for(lambda: queries()["totalQueriesSuccessCount"] == 3, "the window run")
        assert queries()["queries"]["edges"][0]["node"]["recordsProcessedCount"] == 60
        warehouse = server.data_dir / "warehouse" / f"{org}.db"
        import sqlite3
        n = sqlite3.connect(warehouse).execute("SELECT count(*), count(DISTINCT prediction_id) FROM churn").fetchone()
        assert n == (500, 500)
        _, body = gql(server, key, 'mutation ($j: ID!) { deleteTableImportJob(input: {jobId: $j}) '
                                   '{ tableImportJob { jobStatus jobId } } }', {"j": job["id"]})
        assert body["data"]["deleteTableImportJob"]["tableImportJob"]["jobStatus"] == "deleted"


def test_jobs_read_only_allowed_sources_and_never_sluices_own_data(server, tmp_path):
    import sqlite3
    org = server.new_org()[0]
    other = server.new_org()[0]
    key = server.cli_json("apikey", "create", "--org", org)["api_key"]
    other_key = server.cli_json("apikey", "create", "--org", other)["api_key"]
    space = space_of(server, key)
    # The other organization has a warehouse table with something in it.
    data = tmp_path / "exports"
    data.mkdir()
    (data / "preds.csv").write_text("prediction_id,prediction_ts,prediction\n1,2026-01-01T00:00:00Z,secret-row\n")
    server.cli("source", "add", "--org", other, "exports", f"file://{data}")
    _, body = gql(server, other_key, """mutation ($input: CreateTableImportJobInput!) {
        createTableImportJob(input: $input) { tableImportJob { id } } }""", {"input": {
        "spaceId": space_of(server, other_key), "modelName": "theirs", "modelType": "score_categorical",
        "modelEnvironmentName": "production", "tableStore": "Files",
        "fileTableConfig": {"url": f"file://{data}", "tableName": "preds.csv"},
        "schema": {"predictionId": "prediction_id", "timestamp": "prediction_ts", "predictionLabel": "prediction"}}})
    assert "errors" not in body, body
    wait_for(lambda: (server.data_dir / "warehouse" / f"{other}.db").exists() and sqlite3.connect(
        server.data_dir / "warehouse" / f"{other}.db").execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'theirs'").fetchone()[0], "their table")

    create = """mutation ($input: CreateTableImportJobInput!) { createTableImportJob(input: $input) {
        tableImportJob { id } validationResult { validationStatus error { code message } } } }"""

    def dry(store, config, url, table):
        _, body = gql(server, key, create, {"input": {
            "spaceId": space, "modelName": "probe", "modelType": "score_categorical",
            "modelEnvironmentName": "production", "tableStore": store,
            config: {"url": url, "tableName": table}, "dryRun": True,
            "schema": {"predictionId": "id", "timestamp": "created_at", "predictionLabel": "email"}}})
        return body

    user_email = server.cli_json("user", "create", "--org", org, "victim@example.com")["email"]
    attempts = [
        ("SQLite", "sqliteTableConfig", f"sqlite://{server.data_dir}/sluice.db", "users"),
        ("SQLite", "sqliteTableConfig", f"sqlite://{server.data_dir}/warehouse/{other}.db", "theirs"),
        ("SQLite", "sqliteTableConfig", f"sqlite://{data}/../data/sluice.db", "users"),
        ("Files", "fileTableConfig", f"file://{server.data_dir}", "runner.py"),
        ("Files", "fileTableConfig", "file:///etc", "passwd"),
        ("Files", "fileTableConfig", "file:///etc", "no-such-file"),
        ("Files", "fileTableConfig", f"file://{data}", "preds.csv"),  # theirs, not ours
        ("PostgreSQL", "postgresTableConfig", "postgres://postgres@127.0.0.1:5432/postgres", "pg_catalog.pg_authid"),
        ("PostgreSQL", "postgresTableConfig", "postgres://u@h/db?host=/var/run/postgresql", "t"),
    ]
    if server.database_url:
        attempts.append(("PostgreSQL", "postgresTableConfig", server.database_url, "users"))
    messages = []
    for store, config, url, table in attempts:
        body = dry(store, config, url, table)
        text = json.dumps(body)
        assert body.get("errors"), (url, body)
        assert body["errors"][0]["extensions"]["code"] in ("FORBIDDEN", "BAD_USER_INPUT"), (url, body)
        for leaked in (user_email, "secret-row", "root:", "SCRAM-SHA-256", "md5"):
            assert leaked not in text, (url, body)
        messages.append(body["errors"][0]["message"])
    # Whether a file exists is not told either.
    assert messages[4] == messages[5], messages[4:6]
    # Declared for this organization, the folder is readable; a path that
    # climbs out of it, or a link out of it, is not.
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "preds.csv").write_text("id,created_at,email\n1,2026-01-01T00:00:00Z,a@b.c\n")
    (ours / "escape").symlink_to(server.data_dir)
    server.cli("source", "add", "--org", org, "ours", f"file://{ours}")
    body = dry("Files", "fileTableConfig", f"file://{ours}", "preds.csv")
    assert body["data"]["createTableImportJob"]["validationResult"]["validationStatus"] == "SUCCESS", body
    for url, table in ((f"file://{ours}/escape", "preds.csv"), (f"file://{ours}/../exports", "preds.csv"),
                       (f"file://{ours}", "escape/sluice.db"), (f"file://{ours}", "/etc/passwd"),
                       (f"file://{ours}", "../exports/preds.csv")):
        body = dry("Files", "fileTableConfig", url, table)
        assert body.get("errors") and body["errors"][0]["extensions"]["code"] in ("FORBIDDEN", "BAD_USER_INPUT"), \
            (url, table, body)
        assert "secret-row" not in json.dumps(body)
    # sluice's own data cannot even be declared.
    out = subprocess.run([BIN, "source", "add", "--org", org, "store", f"file://{server.data_dir}",
                          *server.store_args()], capture_output=True, text=True, env=server.env)
    assert out.returncode != 0 and "sluice's own data" in out.stderr, out
    listed = server.cli_json("source", "list", "--org", org)
    assert [s["name"] for s in listed] == ["ours"], listed
    # Nothing of the other organization's table changed.
    rows = sqlite3.connect(server.data_dir / "warehouse" / f"{other}.db").execute("SELECT count(*) FROM theirs").fetchone()
    assert rows == (1,)


def test_graphiql_is_served_whole_from_the_binary(server):
    page = requests.get(server.url + "/graphql", timeout=10)
    assert page.status_code == 200 and "GraphiQL" in page.text
    assert "https://" not in page.text and "http://" not in page.text, "nothing from a CDN"
    import re
    assets = re.findall(r'(?:src|href)="(/graphql/assets/[^"]+)"', page.text)
    assert len(assets) == 4, assets
    for a in assets:
        r = requests.get(server.url + a, timeout=10)
        assert r.status_code == 200 and len(r.content) > 1000, a
    assert "GraphiQL" in requests.get(server.url + "/graphql/assets/graphiql.min.js", timeout=10).text
    assert requests.get(server.url + "/graphql/assets/nope.js", timeout=10).status_code == 404


# How each mutation is called on another space's job or in another space.
# The mutations come from the schema itself: one missing here fails the test.
def _job_inputs(job):
    return {
        "pauseTableImportJob": {"jobId": job},
        "startTableImportJob": {"jobId": job},
        "deleteTableImportJob": {"jobId": job},
        "updateTableIngestionParameters": {"jobId": job, "tableIngestionParameters": {"rowLimit": 5}},
        "updateTableImportJob": {"jobId": job, "tableIngestionParameters": {"refreshIntervalMinutes": 5}},
        "createTriggeredOngoingTableRun": {"jobId": job, "queryStart": "2024-08-20T01:00:00Z",
                                           "queryEnd": "2024-08-20T02:00:00Z"},
    }


def test_a_space_key_acts_in_its_space_only_on_every_operation(server):
    org = server.new_org()[0]
    server.cli_json("space", "create", "--org", org, "Other team")
    raw = {s["name"]: s["id"] for s in server.cli_json("space", "list", "--org", org)}
    everywhere = server.cli_json("apikey", "create", "--org", org)["api_key"]
    _, body = gql(server, everywhere, "{ account { organizations { edges { node { spaces { edges { node "
                                      "{ id name } } } } } } } }")
    gids = {e["node"]["name"]: e["node"]["id"] for e in
            body["data"]["account"]["organizations"]["edges"][0]["node"]["spaces"]["edges"]}
    default_name = next(n for n in gids if n != "Other team")
    default, other_space = gids[default_name], gids["Other team"]
    mine = server.cli_json("apikey", "create", "--org", org, "--space", raw[default_name])["api_key"]
    ids = {}
    for name, space in [("theirs", other_space), ("ours", default)]:
        _, body = gql(server, everywhere, """mutation ($input: CreateTableImportJobInput!) {
            createTriggeredOngoingTableImportJob(input: $input) { tableImportJob { id jobId } } }""",
                      {"input": dict(BIGQUERY_INPUT, spaceId=space, modelName=name)})
        assert "errors" not in body, body
        ids[name] = body["data"]["createTriggeredOngoingTableImportJob"]["tableImportJob"]
    before = jobs_of(server, everywhere, other_space)

    _, schema = gql(server, mine, "{ __schema { mutationType { fields { name args { name type { name kind "
                                  "ofType { name } } } } } } }")
    mutations = schema["data"]["__schema"]["mutationType"]["fields"]
    job_ops, space_ops = _job_inputs(ids["theirs"]["jobId"]), {}
    for m in mutations:
        input_type = next(a["type"]["ofType"]["name"] for a in m["args"] if a["name"] == "input")
        _, t = gql(server, mine, "query ($t: String!) { __type(name: $t) { inputFields { name } } }",
                   {"t": input_type})
        fields = {f["name"] for f in t["data"]["__type"]["inputFields"]}
        if "spaceId" in fields:
            space_ops[m["name"]] = (input_type, dict(BIGQUERY_INPUT, spaceId=other_space, modelName="sneaky"))
        else:
            assert "jobId" in fields and m["name"] in job_ops, f"{m['name']}: no cross-space case for it"
            job_ops[m["name"]] = (input_type, job_ops[m["name"]])
    assert len(job_ops) + len(space_ops) == len(mutations) >= 8
    for name, (input_type, inp) in {**job_ops, **space_ops}.items():
        for job_ref in ([inp.get("jobId"), ids["theirs"]["id"]] if "jobId" in inp else [None]):
            if job_ref:
                inp = dict(inp, jobId=job_ref)
            status, body = gql(server, mine, f"mutation ($input: {input_type}!) {{ {name}(input: $input) "
                                             f"{{ __typename }} }}", {"input": inp})
            assert body.get("data") in (None, {name: None}) or body["data"].get(name) is None, (name, body)
            assert body["errors"][0]["extensions"]["code"] in ("NOT_FOUND", "FORBIDDEN"), (name, body)
    # Reads: the other space's job and model are not there for this key.
    _, body = gql(server, mine, "query ($id: ID!) { node(id: $id) { id } }", {"id": ids["theirs"]["id"]})
    assert body["data"]["node"] is None, body
    _, body = gql(server, mine, "query ($id: ID!) { node(id: $id) { id } }", {"id": ids["ours"]["id"]})
    assert body["data"]["node"]["id"] == ids["ours"]["id"], body
    # Nothing of the other space changed.
    assert jobs_of(server, everywhere, other_space) == before
    _, body = gql(server, everywhere, """query ($id: ID!) { node(id: $id) { ... on TableImportJob {
        jobStatus tableIngestionParameters { refreshIntervalSeconds } queries(first: 5) { totalCount } } } }""",
                  {"id": ids["theirs"]["id"]})
    assert body["data"]["node"]["jobStatus"] == "active" and body["data"]["node"]["queries"]["totalCount"] == 0, body


def test_nul_and_oversized_text_are_refused_without_a_database_message(server):
    org = server.new_org()[0]
    key = server.cli_json("apikey", "create", "--org", org)["api_key"]
    space = space_of(server, key)
    create = """mutation ($input: CreateTableImportJobInput!) { createTableImportJob(input: $input) {
        tableImportJob { id } } }"""
    for inp in (dict(BIGQUERY_INPUT, spaceId=space, modelName="churn\u0000"),
                dict(BIGQUERY_INPUT, spaceId=space, modelName="m" * 70_000)):
        status, body = gql(server, key, create, {"input": inp})
        assert status == 400 and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
        assert "variables.input.modelName" in body["errors"][0]["message"], body
    status, body = gql(server, key, 'query { node(id: "x\\u0000") { id } }')
    assert status == 400 and "NUL" in body["errors"][0]["message"], body
    assert jobs_of(server, key, space)["totalCount"] == 0
