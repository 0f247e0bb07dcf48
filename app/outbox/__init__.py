"""The transactional outbox: Kafka messages stored with the change they announce, and parked rows."""
