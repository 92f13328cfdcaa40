"""The database side every process shares: the connection pool, the ingest write path and API keys."""
