"""Kafka plumbing: clients (producers, consumers, the faust app), the topic catalogue, micro-
batches, group membership, and the records that live on compacted topics (sessions,
revocations, health). Stands on the ground floor (``streams.records``, ``streams.settings``)
and knows nothing of features, labels or archives."""
