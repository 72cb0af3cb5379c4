"""A Faust table whose changelog writes can be awaited.

Faust flushes its producer before committing offsets, but that flush gives up
after 0.1 s without progress (ProducerBuffer.flush_atmost), so under load an
offset can be committed while the changelog record of the state it produced is
still queued: a restart then restores stale state. The agent awaits
``changelog_durable()`` instead, before the batch's ack (beside its database write).
With a ``rocksdb://`` store it keeps each key in its own partition's database (rocksdb_store.py).
"""

import faust
from yarl import URL

from stream_processors.rocksdb_store import KeyPartitionedStore


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

    def _new_store_by_url(self, url):
        if URL(str(url)).scheme != "rocksdb":
            return super()._new_store_by_url(url)
        return KeyPartitionedStore(url, self.app, self, table_name=self.name, key_type=self.key_type,
                                   key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                                   value_type=self.value_type, loop=self.loop, options=self.options)
