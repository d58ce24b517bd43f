-- Many backends (issue 17). `backend_name`: the named backend whose answer the
-- client got ("default" for a config with `backend:` alone). `attempts`: every
-- backend tried, in order, as JSON: [{"backend", "status", "error", "ms"}] (and
-- "model" for a try on the models.fallback model). A failed-over request has
-- more than one; NULL for requests no backend was asked for (auth, validation).
ALTER TABLE logs ADD COLUMN backend_name TEXT;
ALTER TABLE logs ADD COLUMN attempts TEXT;
CREATE INDEX IF NOT EXISTS logs_backend_name ON logs (backend_name);
