"""The HTTP edge: the one request pipeline, a codec per API, body reading, validation, health."""
