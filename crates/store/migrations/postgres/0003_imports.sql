-- Table import jobs, their queries (runs) and the queries' tasks.
CREATE TABLE import_jobs (
    seq                 BIGSERIAL PRIMARY KEY,
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
    next_query_at       BIGINT,
    created_at          BIGINT NOT NULL,
    modified_at         BIGINT NOT NULL
);
CREATE INDEX import_jobs_by_org ON import_jobs (organization_id, seq);
CREATE INDEX import_jobs_due ON import_jobs (next_query_at) WHERE status = 'active';

CREATE TABLE import_queries (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    job_id           TEXT NOT NULL,
    organization_id  TEXT NOT NULL,
    status           TEXT NOT NULL,
    trigger_kind     TEXT NOT NULL,
    requested_start  TEXT,
    requested_end    TEXT,
    window_start     TEXT,
    window_end       TEXT,
    records          BIGINT NOT NULL DEFAULT 0,
    error            TEXT,
    attempt          BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_token      BIGINT NOT NULL DEFAULT 0,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX import_queries_by_job ON import_queries (job_id, seq);
CREATE INDEX import_queries_open ON import_queries (status, seq)
    WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'REJECTED');

CREATE TABLE import_tasks (
    query_id     TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    table_name   TEXT NOT NULL,
    records      BIGINT NOT NULL,
    messages     TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    PRIMARY KEY (query_id, seq)
);
