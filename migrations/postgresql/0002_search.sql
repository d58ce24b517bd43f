-- Full-text search over what was asked and answered (`llm-proxy logs -q`), with
-- PostgreSQL's own tsvector. The 'simple' configuration takes words as they
-- are (lower-cased, no stemming, no stop words), as SQLite's FTS5 does. An
-- index on an expression, not a column: `logs` keeps the same columns in both
-- dialects. Query it with the same expression:
--   WHERE logs_search(prompt, response) @@ plainto_tsquery('simple', 'kitchen light')
-- Only the first 100,000 characters of each text are indexed: a tsvector holds
-- at most 1 MB, and a longer one would refuse the row.
CREATE FUNCTION logs_search(prompt TEXT, response TEXT) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT to_tsvector('simple'::regconfig,
                     left(coalesce(prompt, ''), 100000) || ' ' || left(coalesce(response, ''), 100000))
$$;

CREATE INDEX logs_search ON logs USING gin (logs_search(prompt, response));

-- The list queries filter on these.
CREATE INDEX logs_endpoint_timestamp ON logs (endpoint, timestamp);
CREATE INDEX logs_status_code ON logs (status_code);
