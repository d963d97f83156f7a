"""Notifications: texts, the durable outbox, and (later) delivery to channels."""
