-- The server's own secrets (the key that signs tokens and seals connection
-- secrets), kept in the store rather than as a file beside user code's
-- folders; every process of a cluster reads the same one.
CREATE TABLE server_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
