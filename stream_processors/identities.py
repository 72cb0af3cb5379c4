"""Identity resolution in the stream: one shopper, one profile (docs/identity.md).

A user's events name other ids of theirs: the anonymous id of a device they browsed on before logging
in (``anonymousId`` beside ``userId``), an alias's ``previousId``. The worker keeps the graph in a
Faust table keyed by id, so each entry lives on the partition of that id's events:
- a user's entry lists the ids joined to them: ``{"ids": {id: "linked" | "merged"}}``;
- a joined id's entry names its user: ``{"into": user_key}``.

An id A joins a user U in three steps, each idempotent, so a crash anywhere repeats a step harmlessly:
1. U's partition sees A on U's event for the first time: A is added to U's ids as "linked", and a link
   record goes to A's partition once the batch is written.
2. A's partition reads the link and claims A for U: A's entry becomes ``{"into": U}``; once the batch
   is written, A's state (profile and behaviour) goes to U's partition in a merge record, and when the
   broker has that record A's state is dropped. Later events of A, late ones too, are forwarded to U's
   partition re-keyed to U, after the merge record (one producer, one partition: in order).
3. U's partition reads the merge: unless A is "merged" in U's ids already, A's state is folded into
   U's (``UserProfile.absorb``, ``UserBehaviour.absorb``), and PostgreSQL's rows of A move to U in the
   transaction that writes U's merged rows.

Guards: ids in ``denylist`` (placeholders such as ``null``) are never joined; a user joins at most
``max_ids`` ids; an id claimed by one user is refused to another (first link wins); an anonymous
link to an id that is a known user of its own is refused (merging two identified users takes an
alias); a claim that would close a loop (A already lists U) is refused. Refusals are counted and
written to ``user_identities`` with their reason.
"""

from dataclasses import dataclass

import orjson

from spoor.events import Event

LINKED, MERGED, REFUSED = "linked", "merged", "refused"


@dataclass(frozen=True, slots=True)
class Link:
    """``linked_id`` belongs to ``user_key`` (status: linked, merged or refused, with a reason)."""
    user_key: str
    linked_id: str
    kind: str  # anonymous, alias or user
    status: str
    reason: str | None = None

    def row(self, at) -> dict:
        return {"user_key": self.user_key, "id": self.linked_id, "kind": self.kind, "status": self.status,
                "reason": self.reason, "linked_at": at}


def candidate_ids(event: Event) -> list[tuple[str, str]]:
    """(id, kind) of the ids an event names beside its own user key."""
    found = []
    for linked_id, kind in ((event.anonymous_id, "anonymous"), (event.previous_id, "alias"), (event.user_id, "user")):
        if linked_id and linked_id != event.user_key and all(linked_id != seen for seen, _ in found):
            found.append((linked_id, kind))
    return found


class IdentityGraph:
    """The identities table (id bytes -> JSON) and the rules of the module docstring."""

    def __init__(self, table, max_ids: int, denylist):
        self.table = table
        self.max_ids = max_ids
        self.denylist = frozenset(value.strip().lower() for value in denylist)

    def _entry(self, key: str) -> dict:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw else {}

    def _store(self, key: str, entry: dict) -> None:
        self.table[key.encode()] = orjson.dumps(entry)

    def target(self, key: str) -> str | None:
        """The user ``key`` was claimed for, else None."""
        return self._entry(key).get("into")

    def joined(self, user_key: str) -> dict[str, str]:
        return self._entry(user_key).get("ids", {})

    def denied(self, linked_id: str) -> bool:
        return linked_id.strip().lower() in self.denylist

    def discover(self, user_key: str, events: list[Event]) -> list[Link]:
        """Ids on ``user_key``'s events: new ones joined as "linked" or refused; a link record is owed
        for each linked one, and again for one still "linked" (its merge has not come back: the record
        may have been lost with a crash, its state with the local store kept). A merged or refused id
        gives nothing."""
        entry = self._entry(user_key)
        ids = entry.setdefault("ids", {})
        refused = entry.setdefault("refused", [])
        found, seen = [], set()
        for event in events:
            for linked_id, kind in candidate_ids(event):
                if linked_id in seen or linked_id in refused:
                    continue
                seen.add(linked_id)
                if linked_id in ids:
                    if ids[linked_id] == LINKED:
                        found.append(Link(user_key, linked_id, kind, LINKED))
                    continue
                if self.denied(linked_id):
                    reason = "denylisted id (SPOOR_IDENTITY_DENYLIST)"
                elif len(ids) >= self.max_ids:
                    reason = f"the user has {len(ids)} ids joined already (SPOOR_IDENTITY_MAX_IDS_PER_USER)"
                else:
                    ids[linked_id] = LINKED
                    found.append(Link(user_key, linked_id, kind, LINKED))
                    continue
                if len(refused) < self.max_ids:  # remembered so a refusal is counted once, bounded
                    refused.append(linked_id)
                found.append(Link(user_key, linked_id, kind, REFUSED, reason))
        if found:
            if not refused:
                del entry["refused"]
            self._store(user_key, entry)
        return found

    def claim(self, linked_id: str, user_key: str, kind: str, identified: bool) -> Link:
        """A's partition reads a link A -> U. Merged: A is U's now (or was already); refused: why not."""
        entry = self._entry(linked_id)
        into = entry.get("into")
        if into == user_key:
            return Link(user_key, linked_id, kind, MERGED)
        if into is not None:
            return Link(user_key, linked_id, kind, REFUSED, "the id was joined to another user first")
        if user_key in entry.get("ids", {}):
            return Link(user_key, linked_id, kind, REFUSED, "the user is joined to this id: a loop")
        if identified and kind != "alias":
            return Link(user_key, linked_id, kind, REFUSED,
                        "the id is a known user of its own: merging two users takes an alias")
        self._store(linked_id, {"into": user_key, "ids": entry.get("ids", {})})
        return Link(user_key, linked_id, kind, MERGED)

    def refused_by_id(self, user_key: str, linked_id: str) -> None:
        """The id's partition refused the link: the id leaves the user's ids (no more link records)."""
        entry = self._entry(user_key)
        if entry.get("ids", {}).pop(linked_id, None) is not None:
            refused = entry.setdefault("refused", [])
            if linked_id not in refused and len(refused) < self.max_ids:
                refused.append(linked_id)
            self._store(user_key, entry)

    def absorbed(self, user_key: str, from_key: str) -> bool:
        return self.joined(user_key).get(from_key) == MERGED

    def mark_merged(self, user_key: str, from_key: str, carried: dict[str, str]) -> None:
        """A's merge is folded into U: A is U's, merged, and so are the ids A had merged; an id that was
        only linked to A keeps that status here, its own merge being on its way (passed on from A)."""
        entry = self._entry(user_key)
        ids = entry.setdefault("ids", {})
        ids[from_key] = MERGED
        for linked_id, status in carried.items():
            if linked_id != user_key and ids.get(linked_id) != MERGED:
                ids[linked_id] = status
        self._store(user_key, entry)

    def carried_ids(self, key: str) -> dict[str, str]:
        return dict(self._entry(key).get("ids", {}))

    def forget(self, key: str) -> None:
        """An erasure: the id's entry goes (a changelog tombstone)."""
        if self.table.get(key.encode()) is not None:
            del self.table[key.encode()]
