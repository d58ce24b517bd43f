-- The OpenTelemetry trace this exchange was recorded in (telemetry.enabled): 32
-- lowercase hex digits, as trace viewers show it. NULL when telemetry is off or
-- the exchange was not sampled. `llm-proxy logs show` prints it, with a link
-- when telemetry.trace_url is set.
ALTER TABLE logs ADD COLUMN trace_id TEXT;
