"""A source table of predictions, rows for it, a table import job over it
and a fingerprint of every mapped column: what the import job tests and
the store-restart test share."""
from conftest import psql


SOURCE = """CREATE TABLE preds (
    prediction_id bigint PRIMARY KEY, prediction_ts timestamptz NOT NULL,
    prediction text, actual text, feature_age int, feature_score numeric(12,2),
    feature_secret text, tag_region text, model_version text, other jsonb,
    changed_at timestamptz NOT NULL)"""


def add_rows(src, first, last, pad=0):
    psql(src, f"""INSERT INTO preds SELECT g, timestamptz '2026-01-01' + g * interval '1 s',
        repeat('p', {pad}) || CASE WHEN g % 2 = 0 THEN 'yes' ELSE 'no' END, 'yes', g % 90, (g % 10000) / 100.0,
        'secret', 'eu-' || (g % 3), 'v1', jsonb_build_object('g', g),
        timestamptz '2026-01-01' + g * interval '1 s'
        FROM generate_series({first}, {last}) g""")


MAPPED = "prediction_id, prediction_ts, prediction, actual, feature_age, feature_score, tag_region, changed_at"


def fingerprint(url, table, cols=MAPPED):
    return psql(url, f"SELECT count(*) || ':' || count(DISTINCT prediction_id) || ':' || "
                     f"coalesce(md5(string_agg(md5(({cols})::text), '' ORDER BY prediction_id)), '') "
                     f"FROM {table}")


def job_toml(path, src, dst, **extra):
    ingestion = extra.pop("ingestion", "refreshIntervalMinutes = 60")
    schema = extra.pop("schema", """predictionId = "prediction_id"
timestamp = "prediction_ts"
predictionLabel = "prediction"
actualLabel = "actual"
features = "feature_"
exclude = ["feature_secret"]
tags = "tag_"
changeTimestamp = "changed_at"
""")
    path.write_text(f"""name = "preds"
source = "{src}"
table = "preds"
destination = "{dst}"
target = "preds"
[schema]
{schema}
[ingestion]
{ingestion}
""")
    return path
