-- `llm-proxy replay` re-sends a stored request through the running proxy with
-- an X-Replay-Of header naming the original's id; the new row keeps it here.
-- NULL for every other row. The index holds only replays.
ALTER TABLE logs ADD COLUMN replay_of INTEGER;
CREATE INDEX logs_replay_of ON logs (replay_of) WHERE replay_of IS NOT NULL;
