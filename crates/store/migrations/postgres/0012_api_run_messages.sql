-- Each API task keeps how many messages it has, so that a source's runs
-- list, sorted or filtered in SQL and paged with a keyset cursor, counts a
-- run's messages without reading its tasks.
ALTER TABLE api_tasks ADD COLUMN message_count BIGINT NOT NULL DEFAULT 0;
UPDATE api_tasks SET message_count = json_array_length(messages::json);
ALTER TABLE api_runs ADD COLUMN messages BIGINT NOT NULL DEFAULT 0;
UPDATE api_runs SET messages = (SELECT COALESCE(SUM(message_count), 0) FROM api_tasks
    WHERE api_tasks.run_id = api_runs.id);
-- A source's runs sorted by status or type are read one status (or type)
-- at a time in seq order, through these.
CREATE INDEX api_runs_by_source_status ON api_runs (organization_id, source_name, status, seq);
CREATE INDEX api_runs_by_source_type ON api_runs (organization_id, source_name, run_type, seq);
