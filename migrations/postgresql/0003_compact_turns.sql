-- Compact storage and conversation turns (migrations/sqlite/0003_compact_turns.sql
-- explains them). The recipes are JSON text, as on SQLite; the triggers read
-- them as jsonb. They run once per statement, over all its rows (transition
-- tables): the writer inserts a batch of rows in one statement.
CREATE TABLE blobs (
  hash TEXT PRIMARY KEY,               -- blake2b-128 of the text, hex
  data TEXT NOT NULL,
  refs BIGINT NOT NULL DEFAULT 0       -- rows whose recipes name this blob (kept by triggers)
);

ALTER TABLE logs ADD COLUMN request_parts TEXT;          -- recipe for request_body, when compacted
ALTER TABLE logs ADD COLUMN backend_request_parts TEXT;  -- recipe for backend_request, when compacted
ALTER TABLE logs ADD COLUMN turn_id BIGINT;              -- id of the first row of this spoken request

CREATE INDEX logs_turn_id ON logs (turn_id);

-- Each row counts once per blob it names, whichever of its recipes names it.
CREATE FUNCTION logs_blob_names(request_parts TEXT, backend_request_parts TEXT) RETURNS SETOF TEXT
LANGUAGE sql IMMUTABLE AS $$
  SELECT DISTINCT part ->> 0
  FROM jsonb_array_elements(coalesce(request_parts::jsonb, '[]') || coalesce(backend_request_parts::jsonb, '[]'))
       AS part
  WHERE jsonb_typeof(part) = 'array'
$$;

CREATE FUNCTION logs_blobs_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE blobs SET refs = blobs.refs + named.n FROM (
    SELECT name, count(*) AS n FROM new_rows, logs_blob_names(new_rows.request_parts, new_rows.backend_request_parts) AS name
    WHERE new_rows.request_parts IS NOT NULL OR new_rows.backend_request_parts IS NOT NULL
    GROUP BY name
  ) AS named WHERE blobs.hash = named.name;
  RETURN NULL;
END $$;

CREATE FUNCTION logs_blobs_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE blobs SET refs = blobs.refs - named.n FROM (
    SELECT name, count(*) AS n FROM old_rows, logs_blob_names(old_rows.request_parts, old_rows.backend_request_parts) AS name
    WHERE old_rows.request_parts IS NOT NULL OR old_rows.backend_request_parts IS NOT NULL
    GROUP BY name
  ) AS named WHERE blobs.hash = named.name;
  DELETE FROM blobs WHERE refs <= 0 AND hash IN (
    SELECT name FROM old_rows, logs_blob_names(old_rows.request_parts, old_rows.backend_request_parts) AS name
    WHERE old_rows.request_parts IS NOT NULL OR old_rows.backend_request_parts IS NOT NULL
  );
  RETURN NULL;
END $$;

CREATE TRIGGER logs_blobs_insert AFTER INSERT ON logs
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION logs_blobs_insert();

CREATE TRIGGER logs_blobs_delete AFTER DELETE ON logs
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION logs_blobs_delete();

-- Which turn each client's next chat request may continue, shared by every
-- proxy writing here, so that the rounds of one spoken request share a turn
-- whichever proxy takes each. `client` is a digest of (client_addr,
-- user_agent, model); `messages` the digests of the last request's messages.
CREATE TABLE turn_clients (
  client TEXT PRIMARY KEY,
  turn_id BIGINT NOT NULL,
  messages TEXT NOT NULL,              -- JSON array of message digests
  seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
