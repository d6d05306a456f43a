-- Limits of each run of a deployment, set by an administrator
-- (`sluice deployment limits`), as JSON: {"memory_mb", "cpu_seconds", "open_files"}.
ALTER TABLE deployments ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
