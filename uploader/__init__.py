"""The dock's MQTT file-transfer client: the wire formats, the link, the durable outbox,
the bandwidth cap and the sender."""
