"""A Faust table whose changelog writes can be awaited.

Faust flushes its producer before committing offsets, but that flush gives up
after 0.1 s without progress (ProducerBuffer.flush_atmost), so under load an
offset can be committed while the changelog record of the state it produced is
still queued: a restart then restores stale state. The agent awaits
``changelog_durable()`` instead, before the database write that precedes the ack.
"""

import faust


class DurableTable(faust.Table):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unconfirmed_changelog: list = []

    def on_key_set(self, key, value) -> None:
        future = self.send_changelog(self.partition_for_key(key), key, value)
        self.unconfirmed_changelog.append(future)
        self._maybe_set_key_ttl(key, future.message.partition)

    async def changelog_durable(self) -> None:
        """Return once the broker acknowledged every changelog record written so far (or raise)."""
        pending, self.unconfirmed_changelog = self.unconfirmed_changelog, []
        for future in pending:
            await future
