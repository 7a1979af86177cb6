"""MQTT file-transfer client with its durable outbox, and the platform-side receiver."""
