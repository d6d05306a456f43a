-- The reapers find expired leases through these (only leased rows have
-- an expiry), as runs already do.
CREATE INDEX import_queries_by_lease ON import_queries (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX action_runs_by_lease ON action_runs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX api_runs_by_lease ON api_runs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
