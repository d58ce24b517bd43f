-- The answer cache (cache:). cache_hit: 1 when the answer came from the cache,
-- 0 when the request qualified for it but the backend answered (the answer was
-- then kept), NULL when the cache was off or the request did not qualify.
-- For a hit, cache_saved_ms is how long the backend took to make the answer
-- the first time and cache_saved_tokens the prompt and answer tokens it
-- reported then: what the hit spared the backend. Quotas (auth.keys[].quota)
-- count no tokens for a hit.
ALTER TABLE logs ADD COLUMN cache_hit INTEGER;
ALTER TABLE logs ADD COLUMN cache_saved_ms INTEGER;
ALTER TABLE logs ADD COLUMN cache_saved_tokens INTEGER;
