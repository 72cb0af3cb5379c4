"""Spoor. This folder is the ground floor every stage may import, and it imports no stage: settings,
the canonical event and its kinds, bad rows, topics and partitioning, signing and webhooks, the metric
columns, the root exception and exit codes. The stages install beside it under this namespace
(``spoor.ingest``, ``spoor.stream_processors``, ``spoor.storage``, ``spoor.alerts``, ``spoor.segments``,
``spoor.campaigns``, ``spoor.privacy``), and ``spoor.cli`` is the top floor that runs them."""
