-- A run's start and its success each change the run and its attempt: on
-- PostgreSQL one statement does both (a data-modifying WITH); on SQLite
-- these triggers let one UPDATE of the run do both.
--
-- STARTING → RUNNING stamps the attempt's running_at.
CREATE TRIGGER runs_running_stamps_attempt AFTER UPDATE OF status ON runs
WHEN OLD.status = 'STARTING' AND NEW.status = 'RUNNING'
BEGIN
    UPDATE run_attempts SET running_at = NEW.modified_at
    WHERE run_id = NEW.id AND attempt = NEW.attempt;
END;

-- And a run that succeeds ends its attempt in the same statement.
CREATE TRIGGER runs_success_ends_attempt AFTER UPDATE OF status ON runs
WHEN NEW.status = 'SUCCEEDED' AND OLD.status IN ('RUNNING', 'CANCELING')
BEGIN
    UPDATE run_attempts SET finished_at = NEW.finished_at, outcome = 'SUCCEEDED', error = NULL
    WHERE run_id = NEW.id AND attempt = NEW.attempt;
END;
