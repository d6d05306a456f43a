-- The sources an administrator declared for an organization's jobs
-- (`sluice source add`): the URL sealed, as jobs' connections are.
CREATE TABLE sources (
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name            TEXT NOT NULL,
    url_sealed      TEXT NOT NULL,
    url_shown       TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (organization_id, name)
);
