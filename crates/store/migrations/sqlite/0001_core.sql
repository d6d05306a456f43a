-- sluice metadata, SQLite. Times are microseconds since the epoch (UTC);
-- JSON documents are TEXT.
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations(id),
    email            TEXT NOT NULL,
    token_hash       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    UNIQUE (organization_id, email)
);

CREATE TABLE deployments (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT NOT NULL UNIQUE,
    organization_id      TEXT NOT NULL REFERENCES organizations(id),
    name                 TEXT NOT NULL,
    description          TEXT NOT NULL,
    default_environment  TEXT NOT NULL,
    creator              TEXT,
    created_at           INTEGER NOT NULL,
    modified_at          INTEGER NOT NULL
);
CREATE INDEX deployments_by_org ON deployments (organization_id, seq);

CREATE TABLE versions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL,
    deployment_id    TEXT NOT NULL,
    version          TEXT NOT NULL,
    handler          TEXT NOT NULL,
    image            TEXT NOT NULL,
    user_parameters  TEXT NOT NULL,
    archive          TEXT,
    created_at       INTEGER NOT NULL,
    modified_at      INTEGER NOT NULL,
    UNIQUE (deployment_id, version)
);

CREATE TABLE runs (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    organization_id   TEXT NOT NULL,
    deployment_id     TEXT NOT NULL,
    version_id        TEXT NOT NULL,
    trigger_id        TEXT,
    status            TEXT NOT NULL,
    input_data        TEXT NOT NULL,
    models            TEXT NOT NULL,
    output_template   TEXT NOT NULL,
    environment       TEXT NOT NULL,
    retry_count       INTEGER NOT NULL,
    distribution      INTEGER,
    queue             TEXT,
    attempt           INTEGER NOT NULL DEFAULT 0,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    not_before        INTEGER NOT NULL,
    idempotency_key   TEXT,
    error             TEXT,
    created_at        INTEGER NOT NULL,
    modified_at       INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER
);
CREATE INDEX runs_by_deployment ON runs (deployment_id, seq);
CREATE INDEX runs_by_trigger ON runs (trigger_id, seq) WHERE trigger_id IS NOT NULL;
CREATE INDEX runs_by_status ON runs (status, seq);
CREATE INDEX runs_by_queue ON runs (queue, status) WHERE queue IS NOT NULL;
CREATE INDEX runs_by_lease ON runs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (deployment_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE run_attempts (
    run_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    worker       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    running_at   INTEGER,
    finished_at  INTEGER,
    outcome      TEXT NOT NULL,
    error        TEXT,
    PRIMARY KEY (run_id, attempt)
);

CREATE TABLE log_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX log_events_by_run ON log_events (run_id, seq);
