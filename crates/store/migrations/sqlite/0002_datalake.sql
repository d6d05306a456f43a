-- Datalake channels and files, triggers, and the trigger event ledger
-- (the outbox a file's arrival is written to, in the file's own transaction).
CREATE TABLE channels (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL,
    storage_type     TEXT NOT NULL,
    archived         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX channels_by_org ON channels (organization_id, seq);

CREATE TABLE datalake_files (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id       TEXT NOT NULL,
    file_id          TEXT NOT NULL,
    organization_id  TEXT NOT NULL,
    content_type     TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    size             INTEGER NOT NULL,
    object           TEXT NOT NULL,
    lifetime         TEXT,
    source_run_id    TEXT,
    uploaded_at      INTEGER NOT NULL,
    UNIQUE (channel_id, file_id)
);
CREATE INDEX datalake_files_by_channel ON datalake_files (channel_id, seq);
-- A run writes its output into a channel once.
CREATE UNIQUE INDEX datalake_files_by_source_run ON datalake_files (channel_id, source_run_id)
    WHERE source_run_id IS NOT NULL;

CREATE TABLE triggers (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT NOT NULL UNIQUE,
    organization_id    TEXT NOT NULL,
    deployment_id      TEXT NOT NULL,
    version_id         TEXT NOT NULL,
    input_channel_id   TEXT NOT NULL,
    output_channel_id  TEXT,
    models             TEXT NOT NULL,
    environment        TEXT NOT NULL,
    retry_count        INTEGER NOT NULL,
    distribution       INTEGER,
    created_at         INTEGER NOT NULL,
    modified_at        INTEGER NOT NULL,
    deleted_at         INTEGER
);
CREATE INDEX triggers_by_deployment ON triggers (deployment_id, seq);
CREATE INDEX triggers_by_input ON triggers (input_channel_id) WHERE deleted_at IS NULL;

CREATE TABLE trigger_events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger_id       TEXT NOT NULL,
    organization_id  TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    file_id          TEXT NOT NULL,
    state            TEXT NOT NULL,
    run_id           TEXT,
    note             TEXT,
    created_at       INTEGER NOT NULL,
    dispatched_at    INTEGER,
    UNIQUE (trigger_id, channel_id, file_id)
);
CREATE INDEX trigger_events_pending ON trigger_events (seq) WHERE state = 'PENDING';
CREATE INDEX trigger_events_by_trigger ON trigger_events (trigger_id, seq);
