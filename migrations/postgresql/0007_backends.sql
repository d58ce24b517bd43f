-- Many backends (issue 17; migrations/sqlite/0007_backends.sql says what they hold).
ALTER TABLE logs ADD COLUMN backend_name TEXT;
ALTER TABLE logs ADD COLUMN attempts TEXT;   -- JSON text, as on SQLite
CREATE INDEX IF NOT EXISTS logs_backend_name ON logs (backend_name);
