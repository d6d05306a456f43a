-- The Tailer-style action API: an organization's account code, its
-- warehouses and buckets, deployed configurations (every version kept: a run runs the
-- version it was launched with), their runs (leased work) and tasks.
CREATE TABLE action_accounts (
    account          TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL UNIQUE
);

CREATE TABLE warehouses (
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    url_sealed       TEXT NOT NULL,
    url_shown        TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (organization_id, name)
);

-- What a table-to-storage configuration's bucket name stands for.
CREATE TABLE buckets (
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    url_sealed       TEXT NOT NULL,
    url_shown        TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (organization_id, name)
);

CREATE TABLE action_configurations (
    organization_id     TEXT NOT NULL,
    configuration_type  TEXT NOT NULL,
    api_id              TEXT NOT NULL,
    configuration_id    TEXT NOT NULL,
    account             TEXT NOT NULL,
    environment         TEXT NOT NULL,
    version             BIGINT NOT NULL,
    activated           BIGINT NOT NULL,
    archived            BIGINT NOT NULL,
    max_active_runs     BIGINT NOT NULL,
    next_run_at         BIGINT,
    created_at          BIGINT NOT NULL,
    modified_at         BIGINT NOT NULL,
    PRIMARY KEY (organization_id, configuration_type, api_id)
);
CREATE INDEX action_configurations_due ON action_configurations (next_run_at);

CREATE TABLE action_configuration_versions (
    organization_id     TEXT NOT NULL,
    configuration_type  TEXT NOT NULL,
    api_id              TEXT NOT NULL,
    version             BIGINT NOT NULL,
    body                TEXT NOT NULL,
    deployed_at         BIGINT NOT NULL,
    PRIMARY KEY (organization_id, configuration_type, api_id, version)
);

CREATE TABLE action_runs (
    seq                 BIGSERIAL PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    organization_id     TEXT NOT NULL,
    configuration_type  TEXT NOT NULL,
    api_id              TEXT NOT NULL,
    version             BIGINT NOT NULL,
    job_id              TEXT NOT NULL,
    execution_date      TEXT NOT NULL,
    input               TEXT,
    status              TEXT NOT NULL,
    reported            TEXT,
    warned              BIGINT NOT NULL DEFAULT 0,
    stopped             BIGINT NOT NULL DEFAULT 0,
    error               TEXT,
    attempt             BIGINT NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_token         BIGINT NOT NULL DEFAULT 0,
    lease_expires_at    BIGINT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    modified_at         BIGINT NOT NULL
);
CREATE INDEX action_runs_by_configuration
    ON action_runs (organization_id, configuration_type, api_id, seq);
CREATE INDEX action_runs_open ON action_runs (status, seq)
    WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'REJECTED');

CREATE TABLE action_tasks (
    run_id       TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    position     BIGINT NOT NULL,
    status       TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    row_count    BIGINT NOT NULL DEFAULT 0,
    messages     TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id)
);

-- A workflow's awaited jobs that succeeded since it last fired (or was
-- reset): written in the transaction that records each success.
CREATE TABLE workflow_successes (
    organization_id  TEXT NOT NULL,
    workflow_id      TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    succeeded_at     BIGINT NOT NULL,
    PRIMARY KEY (organization_id, workflow_id, job_id)
);

-- Files a storage-to-storage configuration's source holds, each recorded
-- once (by name and fingerprint) with the run it started, in one
-- transaction.
CREATE TABLE action_arrivals (
    organization_id  TEXT NOT NULL,
    api_id           TEXT NOT NULL,
    object_key       TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    seen_at          BIGINT NOT NULL,
    PRIMARY KEY (organization_id, api_id, object_key, fingerprint)
);
