-- The audit trail. The first twelve columns are the Go LLM Proxy's `logs`
-- table, with the same names and meanings, so its documented queries run
-- unchanged; the rest is what debugging one exchange needs.
CREATE TABLE logs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp DATETIME NOT NULL,          -- request start, UTC, 'YYYY-MM-DDTHH:MM:SS.mmmZ'
  endpoint TEXT NOT NULL,               -- e.g. /api/chat
  method TEXT NOT NULL,
  model TEXT,                           -- the model name the client asked for
  prompt TEXT,                          -- generate: the prompt; chat: the last user message
  response TEXT,                        -- the assembled answer as plain text
  status_code INTEGER,                  -- what the client got (499: client went away)
  latency_ms INTEGER,                   -- request start to last byte
  stream BOOLEAN,
  backend_type TEXT,                    -- ollama | openai
  error TEXT,                           -- NULL when the exchange succeeded
  request_id TEXT,
  client_addr TEXT,
  user_agent TEXT,
  backend_model TEXT,                   -- the model name sent to the backend
  request_body TEXT,                    -- the client's request, as received
  backend_request TEXT,                 -- the request sent to the backend, when translated
  response_body TEXT,                   -- the full response; for streams the assembled object
  thinking TEXT,
  tool_calls TEXT,                      -- JSON array of the tool calls the client received
  done_reason TEXT,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  ttfb_ms INTEGER,                      -- request start to first byte sent to the client
  ttft_ms INTEGER,                      -- request start to first content/thinking token
  api TEXT NOT NULL DEFAULT 'ollama'    -- which API the client spoke
);

CREATE INDEX logs_timestamp ON logs (timestamp);
CREATE INDEX logs_model_timestamp ON logs (model, timestamp);
