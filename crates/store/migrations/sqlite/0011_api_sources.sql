-- HTTP API sources (dlt's rest_api configuration, sealed: it holds
-- secrets), their runs (leased work; one active run per source, held by a
-- unique index), the runs' tasks and tables, and the data loads of the
-- runs that succeeded.
CREATE TABLE api_sources (
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    config_sealed    TEXT NOT NULL,
    config_shown     TEXT NOT NULL,
    destination      TEXT,
    dataset          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    modified_at      INTEGER NOT NULL,
    PRIMARY KEY (organization_id, name)
);

CREATE TABLE api_runs (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    organization_id   TEXT NOT NULL,
    source_name       TEXT NOT NULL,
    run_type          TEXT NOT NULL,
    status            TEXT NOT NULL,
    error             TEXT,
    retry_of          TEXT,
    records           INTEGER NOT NULL DEFAULT 0,
    tables            INTEGER NOT NULL DEFAULT 0,
    attempt           INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    lease_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    modified_at       INTEGER NOT NULL
);
CREATE INDEX api_runs_by_source ON api_runs (organization_id, source_name, seq);
CREATE UNIQUE INDEX api_runs_one_active ON api_runs (organization_id, source_name)
    WHERE status IN ('SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING', 'RUNNING', 'CANCELING');
CREATE INDEX api_runs_open ON api_runs (status, seq)
    WHERE status IN ('RUNNABLE', 'STARTING', 'RUNNING', 'CANCELING');

CREATE TABLE api_tasks (
    run_id       TEXT NOT NULL,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    table_name   TEXT,
    status       TEXT NOT NULL,
    records      INTEGER NOT NULL DEFAULT 0,
    messages     TEXT NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (run_id, position)
);

CREATE TABLE api_run_tables (
    run_id      TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    columns     TEXT NOT NULL,
    records     INTEGER NOT NULL,
    PRIMARY KEY (run_id, table_name)
);

CREATE TABLE api_data_loads (
    run_id           TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL,
    source_name      TEXT NOT NULL,
    tables           INTEGER NOT NULL,
    records          INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
