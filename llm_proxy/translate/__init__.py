"""Pure translation between the Ollama API and OpenAI-style backends."""
