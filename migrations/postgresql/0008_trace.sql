-- The OpenTelemetry trace of the exchange (migrations/sqlite/0008_trace.sql says what it holds).
ALTER TABLE logs ADD COLUMN trace_id TEXT;
