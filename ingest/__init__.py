"""Stage 1: the HTTP collector. Segment-spec messages in, canonical events to Kafka."""
