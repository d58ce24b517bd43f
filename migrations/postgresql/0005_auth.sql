-- The name of the API key (auth.keys[].name) a request came with; never the key.
ALTER TABLE logs ADD COLUMN key_name TEXT;
