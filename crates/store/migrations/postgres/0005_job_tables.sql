-- A destination table belongs to one live job: the key names the table
-- (the destination URL without its secret, and the table), and no two
-- jobs that are not deleted share it.
ALTER TABLE import_jobs ADD COLUMN destination_key TEXT;
CREATE UNIQUE INDEX import_jobs_one_per_table ON import_jobs (destination_key)
    WHERE status <> 'deleted';
