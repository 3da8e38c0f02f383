"""Access: API keys and roles, the signed ingest webhook."""
