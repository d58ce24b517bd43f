-- The answer cache (migrations/sqlite/0010_cache_quota.sql says what they hold).
ALTER TABLE logs ADD COLUMN cache_hit BIGINT;   -- 1 a hit, 0 a miss that was kept, NULL otherwise
ALTER TABLE logs ADD COLUMN cache_saved_ms BIGINT;
ALTER TABLE logs ADD COLUMN cache_saved_tokens BIGINT;
