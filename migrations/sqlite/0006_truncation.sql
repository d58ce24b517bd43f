-- Stored copies are capped at database.max_body_kb. For each text column whose
-- stored copy was cut short (request_body, backend_request, response_body,
-- prompt, response, thinking), `truncated` holds the full size in bytes of
-- UTF-8, as a JSON object: {"response_body": 67108864}. An answer cut as it
-- was relayed, its full size never known, adds "answer": null. NULL when every
-- column is stored whole. A cut body is no longer JSON; it is stored as text.
ALTER TABLE logs ADD COLUMN truncated TEXT;
