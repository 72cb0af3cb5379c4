"""Stand-ins for ProfileTracker's Faust table in the pure tests of the fold."""


class DictTable(dict):
    """A dict with DurableTable's one extra call; nothing to make durable."""

    async def changelog_durable(self) -> None:
        pass
