"""Adapters at the edges: PostgreSQL, Kafka, HTTP."""
