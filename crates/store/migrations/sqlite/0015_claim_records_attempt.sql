-- A run's claim records its attempt in the same statement: on PostgreSQL a
-- data-modifying WITH, on SQLite this trigger (RUNNABLE → STARTING is a
-- claim's move, and only a claim's). The claim stamps modified_at with its
-- time, the attempt's start.
CREATE TRIGGER runs_claim_records_attempt AFTER UPDATE OF status ON runs
WHEN OLD.status = 'RUNNABLE' AND NEW.status = 'STARTING'
BEGIN
    INSERT INTO run_attempts (run_id, attempt, worker, started_at, outcome)
    VALUES (NEW.id, NEW.attempt, NEW.lease_owner, NEW.modified_at, 'RUNNING');
END;
