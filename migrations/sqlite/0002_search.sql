-- Full-text search over what was asked and answered (`llm-proxy logs -q`).
-- An external-content FTS5 index: the text lives only in `logs`; triggers keep
-- the index in step with every insert, delete and edit, including those a user
-- makes with plain SQL.
CREATE VIRTUAL TABLE logs_fts USING fts5 (prompt, response, content = 'logs', content_rowid = 'id');

CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
  INSERT INTO logs_fts (rowid, prompt, response) VALUES (new.id, new.prompt, new.response);
END;

CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN
  INSERT INTO logs_fts (logs_fts, rowid, prompt, response) VALUES ('delete', old.id, old.prompt, old.response);
END;

CREATE TRIGGER logs_fts_update AFTER UPDATE OF prompt, response ON logs BEGIN
  INSERT INTO logs_fts (logs_fts, rowid, prompt, response) VALUES ('delete', old.id, old.prompt, old.response);
  INSERT INTO logs_fts (rowid, prompt, response) VALUES (new.id, new.prompt, new.response);
END;

-- Index the rows an older database already holds.
INSERT INTO logs_fts (logs_fts) VALUES ('rebuild');

-- The list queries filter on these.
CREATE INDEX logs_endpoint_timestamp ON logs (endpoint, timestamp);
CREATE INDEX logs_status_code ON logs (status_code);
