"""Search by business keys: the terms an event is found by, taken from its body at intake.

An event is indexed under its checkout session id (``data.id``), its customer
(``data.externalCustomerId``) and the metadata keys named in ``LOOPS_SEARCH_METADATA_KEYS``
(``data.metadata.<key>``). The receiver already parsed the body to read its id and type, so
taking these is a few dictionary lookups on the request's path; the record script writes the
index entries in the same round trip as the event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loops_webhooks.workers import keys
from loops_webhooks.workers.scripts import length_prefixed
from loops_webhooks.workers.sessions import business_value, session_id

__all__ = [
    "BusinessKeys",
    "SearchTerms",
    "UnsearchableKey",
    "pack_terms",
    "search_terms",
    "unpack_terms",
]


class UnsearchableKey(ValueError):
    """A filter names a metadata key that is not indexed (not in LOOPS_SEARCH_METADATA_KEYS)."""


def search_terms(document: Mapping[str, Any], metadata_keys: Sequence[str]) -> tuple[str, ...]:
    """The terms of one parsed event; absent, empty or non-scalar values give none."""
    data = document.get("data")
    if not isinstance(data, dict):
        return ()
    terms: list[str] = []
    session = session_id(document)
    if session is not None:
        terms.append(keys.session_term(session))
    customer = business_value(data.get("externalCustomerId"))
    if customer is not None:
        terms.append(keys.customer_term(customer))
    metadata = data.get("metadata")
    if metadata_keys and isinstance(metadata, dict):
        for name in metadata_keys:
            value = business_value(metadata.get(name))
            if value is not None:
                terms.append(keys.metadata_term(name, value))
    return tuple(terms)


def pack_terms(terms: Iterable[str]) -> bytes:
    """Terms as the scripts read them (``lua/length_prefixed.lua``), in one argument."""
    return length_prefixed(terms)


def unpack_terms(packed: bytes) -> tuple[str, ...]:
    terms: list[str] = []
    position = 0
    while position < len(packed):
        colon = packed.index(b":", position)
        length = int(packed[position:colon])
        terms.append(packed[colon + 1 : colon + 1 + length].decode())
        position = colon + 1 + length
    return tuple(terms)


@dataclass(frozen=True, slots=True)
class BusinessKeys:
    """An event's terms as a person reads them."""

    session_id: str | None = None
    customer_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, terms: Iterable[str]) -> BusinessKeys:
        found: dict[str, str] = {}
        metadata: dict[str, str] = {}
        for term in terms:
            kind, name, value = keys.term_parts(term)
            if kind == "metadata":
                metadata[name] = value
            else:
                found[kind] = value
        return cls(found.get("session"), found.get("customer"), metadata)


@dataclass(frozen=True, slots=True)
class SearchTerms:
    """The terms a filter asks for, checked against what is searchable.

    ``all_of``: every one must be held (``--session``, ``--customer``, ``--metadata``);
    ``any_of``: one at least (the dashboard's search box: one value that may be a session
    id, a customer id or a searchable metadata value).
    """

    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        metadata_keys: Sequence[str],
        *,
        session_id: str | None = None,
        customer_id: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        text: str | None = None,
    ) -> SearchTerms:
        """Raises UnsearchableKey for a metadata key that is not indexed."""
        all_of: list[str] = []
        if session_id:
            all_of.append(keys.session_term(session_id))
        if customer_id:
            all_of.append(keys.customer_term(customer_id))
        for name, value in metadata:
            if name not in metadata_keys:
                searchable = ", ".join(metadata_keys) or "none"
                raise UnsearchableKey(
                    f"metadata key {name!r} is not searchable: LOOPS_SEARCH_METADATA_KEYS "
                    f"names the searchable ones (now: {searchable})"
                )
            all_of.append(keys.metadata_term(name, value))
        any_of: list[str] = []
        if text:
            any_of = [keys.session_term(text), keys.customer_term(text)]
            any_of += [keys.metadata_term(name, text) for name in metadata_keys]
        return cls(tuple(all_of), tuple(any_of))

    def __bool__(self) -> bool:
        return bool(self.all_of or self.any_of)

    def index_keys(self) -> list[str]:
        """The search indexes to read: the first required term's, else every optional one's."""
        if self.all_of:
            return [keys.search_key(self.all_of[0])]
        return [keys.search_key(term) for term in self.any_of]

    def held_by(self, terms: Iterable[str]) -> bool:
        held = set(terms)
        return held.issuperset(self.all_of) and (
            not self.any_of or not held.isdisjoint(self.any_of)
        )
