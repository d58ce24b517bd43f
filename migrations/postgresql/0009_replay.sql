-- `llm-proxy replay` (migrations/sqlite/0009_replay.sql says what it holds).
ALTER TABLE logs ADD COLUMN replay_of BIGINT;
CREATE INDEX logs_replay_of ON logs (replay_of) WHERE replay_of IS NOT NULL;
