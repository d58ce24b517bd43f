-- Full sizes of the stored copies cut at database.max_body_kb, as JSON text
-- (migrations/sqlite/0006_truncation.sql).
ALTER TABLE logs ADD COLUMN truncated TEXT;
