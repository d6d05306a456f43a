-- sluice metadata, PostgreSQL. Times are microseconds since the epoch (UTC);
-- JSON documents are TEXT.
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations(id),
    email            TEXT NOT NULL,
    token_hash       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    UNIQUE (organization_id, email)
);

CREATE TABLE deployments (
    seq                  BIGSERIAL PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    organization_id      TEXT NOT NULL REFERENCES organizations(id),
    name                 TEXT NOT NULL,
    description          TEXT NOT NULL,
    default_environment  TEXT NOT NULL,
    creator              TEXT,
    created_at           BIGINT NOT NULL,
    modified_at          BIGINT NOT NULL
);
CREATE INDEX deployments_by_org ON deployments (organization_id, seq);

CREATE TABLE versions (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL,
    deployment_id    TEXT NOT NULL,
    version          TEXT NOT NULL,
    handler          TEXT NOT NULL,
    image            TEXT NOT NULL,
    user_parameters  TEXT NOT NULL,
    archive          TEXT,
    created_at       BIGINT NOT NULL,
    modified_at      BIGINT NOT NULL,
    UNIQUE (deployment_id, version)
);

CREATE TABLE runs (
    seq               BIGSERIAL PRIMARY KEY,
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
    retry_count       BIGINT NOT NULL,
    distribution      BIGINT,
    queue             TEXT,
    attempt           BIGINT NOT NULL DEFAULT 0,
    lease_token       BIGINT NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    not_before        BIGINT NOT NULL,
    idempotency_key   TEXT,
    error             TEXT,
    created_at        BIGINT NOT NULL,
    modified_at       BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
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
    attempt      BIGINT NOT NULL,
    worker       TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    running_at   BIGINT,
    finished_at  BIGINT,
    outcome      TEXT NOT NULL,
    error        TEXT,
    PRIMARY KEY (run_id, attempt)
);

CREATE TABLE log_events (
    seq      BIGSERIAL PRIMARY KEY,
    run_id   TEXT NOT NULL,
    attempt  BIGINT NOT NULL,
    ts       BIGINT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX log_events_by_run ON log_events (run_id, seq);
