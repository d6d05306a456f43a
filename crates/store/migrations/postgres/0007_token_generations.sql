-- A user's tokens carry the generation they were signed in; `sluice auth
-- revoke` moves it on, and every token signed before stops working.
ALTER TABLE users ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
