-- Spaces (one default per organization), their models, and API keys.
CREATE TABLE spaces (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL,
    private          BIGINT NOT NULL,
    is_default       BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);
CREATE UNIQUE INDEX spaces_one_default ON spaces (organization_id) WHERE is_default = 1;

CREATE TABLE models (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL,
    space_id         TEXT NOT NULL,
    name             TEXT NOT NULL,
    model_type       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    UNIQUE (space_id, name)
);

CREATE TABLE api_keys (
    id               TEXT NOT NULL PRIMARY KEY,
    organization_id  TEXT NOT NULL,
    space_id         TEXT,
    key_hash         TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL
);
