"""The durable log (NATS JetStream) and the batch writers behind it."""
