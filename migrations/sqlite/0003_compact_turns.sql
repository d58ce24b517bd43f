-- Compact storage and conversation turns.
--
-- Home Assistant resends the same system prompt, tool list and earlier
-- messages on every round of a spoken request. Large pieces of a request body
-- (each top-level value, each message) are stored once in `blobs`, keyed by
-- their hash; the row keeps a recipe in `request_parts` / `backend_request_parts`
-- and its `request_body` / `backend_request` is then NULL. The recipe is a JSON
-- array whose items are either literal text ("...") or a one-item array naming
-- a blob (["<hash>"]); concatenated in order they give back the original bytes.
-- Blob text is stored as plain text (not compressed) so that plain SQL can
-- reassemble it: the `logs_full` view below does.
CREATE TABLE blobs (
  hash TEXT PRIMARY KEY,               -- blake2b-128 of the text, hex
  data TEXT NOT NULL,
  refs INTEGER NOT NULL DEFAULT 0      -- rows whose recipes name this blob (kept by triggers)
);

ALTER TABLE logs ADD COLUMN request_parts TEXT;          -- recipe for request_body, when compacted
ALTER TABLE logs ADD COLUMN backend_request_parts TEXT;  -- recipe for backend_request, when compacted
ALTER TABLE logs ADD COLUMN turn_id INTEGER;             -- id of the first row of this spoken request

CREATE INDEX logs_turn_id ON logs (turn_id);

-- Reference counts: a blob lives while some row names it, so deleting rows
-- (retention, `llm-proxy prune`, or a user's own DELETE) frees their blobs too.
CREATE TRIGGER logs_blobs_insert AFTER INSERT ON logs
WHEN new.request_parts IS NOT NULL OR new.backend_request_parts IS NOT NULL BEGIN
  UPDATE blobs SET refs = refs + 1 WHERE hash IN (
    SELECT json_extract(value, '$[0]') FROM json_each(coalesce(new.request_parts, '[]')) WHERE type = 'array'
    UNION
    SELECT json_extract(value, '$[0]') FROM json_each(coalesce(new.backend_request_parts, '[]')) WHERE type = 'array'
  );
END;

CREATE TRIGGER logs_blobs_delete AFTER DELETE ON logs
WHEN old.request_parts IS NOT NULL OR old.backend_request_parts IS NOT NULL BEGIN
  UPDATE blobs SET refs = refs - 1 WHERE hash IN (
    SELECT json_extract(value, '$[0]') FROM json_each(coalesce(old.request_parts, '[]')) WHERE type = 'array'
    UNION
    SELECT json_extract(value, '$[0]') FROM json_each(coalesce(old.backend_request_parts, '[]')) WHERE type = 'array'
  );
  DELETE FROM blobs WHERE refs <= 0 AND hash IN (
    SELECT json_extract(value, '$[0]') FROM json_each(coalesce(old.request_parts, '[]')) WHERE type = 'array'
    UNION
    SELECT json_extract(value, '$[0]') FROM json_each(coalesce(old.backend_request_parts, '[]')) WHERE type = 'array'
  );
END;

-- `logs` with request_body and backend_request put back together, for plain SQL
-- and Datasette. Every other column is as in `logs`.
CREATE VIEW logs_full AS
SELECT
  logs.*,
  coalesce(logs.request_body, (
    SELECT group_concat(piece, '') FROM (
      SELECT CASE j.type WHEN 'text' THEN j.value
        ELSE (SELECT data FROM blobs WHERE hash = json_extract(j.value, '$[0]')) END AS piece
      FROM json_each(logs.request_parts) AS j ORDER BY j.key
    )
  )) AS full_request_body,
  coalesce(logs.backend_request, (
    SELECT group_concat(piece, '') FROM (
      SELECT CASE j.type WHEN 'text' THEN j.value
        ELSE (SELECT data FROM blobs WHERE hash = json_extract(j.value, '$[0]')) END AS piece
      FROM json_each(logs.backend_request_parts) AS j ORDER BY j.key
    )
  )) AS full_backend_request
FROM logs;
