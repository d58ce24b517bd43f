-- Views over `logs`, made again by the migrator after every migration it
-- applies (a PostgreSQL view keeps the columns `logs.*` had when it was made,
-- so a new column needs a new view). Not numbered: never recorded as applied.
DROP VIEW IF EXISTS logs_full;

-- `logs` with request_body and backend_request put back together.
CREATE VIEW logs_full AS
SELECT
  logs.*,
  coalesce(logs.request_body, (
    SELECT string_agg(CASE jsonb_typeof(p.part) WHEN 'string' THEN p.part #>> '{}'
                      ELSE (SELECT data FROM blobs WHERE hash = p.part ->> 0) END, '' ORDER BY p.n)
    FROM jsonb_array_elements(logs.request_parts::jsonb) WITH ORDINALITY AS p (part, n)
  )) AS full_request_body,
  coalesce(logs.backend_request, (
    SELECT string_agg(CASE jsonb_typeof(p.part) WHEN 'string' THEN p.part #>> '{}'
                      ELSE (SELECT data FROM blobs WHERE hash = p.part ->> 0) END, '' ORDER BY p.n)
    FROM jsonb_array_elements(logs.backend_request_parts::jsonb) WITH ORDINALITY AS p (part, n)
  )) AS full_backend_request
FROM logs;
