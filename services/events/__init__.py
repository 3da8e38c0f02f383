"""Outbound events (write-back to the repository): a transactional outbox, admin-managed subscriptions and
Standard Webhooks deliveries with retries and a dead-letter list."""
