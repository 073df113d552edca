"""The durable store: incidents, observations, the audit trail, chat messages, PRs and org state."""
