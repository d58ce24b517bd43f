-- The name of the API key (auth.keys[].name) a request came with; NULL when
-- keys are off, the path is exempt, or the request had no valid key. The key
-- itself is never stored.
ALTER TABLE logs ADD COLUMN key_name TEXT;
