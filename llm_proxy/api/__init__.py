"""HTTP handlers, one module per API the proxy speaks."""
