-- Table import jobs, their queries (runs) and the queries' tasks.
CREATE TABLE import_jobs (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    organization_id     TEXT NOT NULL,
    space               TEXT NOT NULL,
    name                TEXT NOT NULL,
    status              TEXT NOT NULL,
    spec                TEXT NOT NULL,
    source_sealed       TEXT NOT NULL,
    destination_sealed  TEXT NOT NULL,
    source_shown        TEXT NOT NULL,
    destination_shown   TEXT NOT NULL,
    next_query_at       INTEGER,
    created_at          INTEGER NOT NULL,
    modified_at         INTEGER NOT NULL
);
CREATE INDEX import_jobs_by_org ON import_jobs (organization_id, seq);
CREATE INDEX import_jobs_due ON import_jobs (next_query_at) WHERE status = 'active';

CREATE TABLE import_queries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    job_id           TEXT NOT NULL,
    organization_id  TEXT NOT NULL,
    status           TEXT NOT NULL,
    trigger_kind     TEXT NOT NULL,
    requested_start  TEXT,
    requested_end    TEXT,
    window_start     TEXT,
    window_end       TEXT,
    records          INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX import_queries_by_job ON import_queries (job_id, seq);
CREATE INDEX import_queries_open ON import_queries (status, seq)
    WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'REJECTED');

CREATE TABLE import_tasks (
    query_id     TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    table_name   TEXT NOT NULL,
    records      INTEGER NOT NULL,
    messages     TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (query_id, seq)
);
