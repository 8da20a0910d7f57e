"""The terms an event is found by, taken from its parsed body."""

from __future__ import annotations

import pytest

from loops_webhooks.workers.search import (
    BusinessKeys,
    SearchTerms,
    UnsearchableKey,
    pack_terms,
    search_terms,
    unpack_terms,
)

EVENT = {
    "id": "evt_1",
    "type": "checkout.session.completed",
    "data": {
        "id": "cs_abc",
        "externalCustomerId": "customer_123",
        "metadata": {"orderId": 456, "source": "website", "invoiceId": "inv_9"},
    },
}


def test_an_event_is_found_by_its_session_customer_and_the_searchable_metadata_only() -> None:
    terms = search_terms(EVENT, ("orderId", "invoiceId"))

    assert terms == (
        "session:cs_abc",
        "customer:customer_123",
        "metadata:orderId=456",
        "metadata:invoiceId=inv_9",
    )
    assert BusinessKeys.of(terms) == BusinessKeys(
        "cs_abc", "customer_123", {"orderId": "456", "invoiceId": "inv_9"}
    )


@pytest.mark.parametrize(
    "data",
    [None, "cs_abc", {"id": "", "externalCustomerId": True, "metadata": ["orderId"]}],
)
def test_absent_empty_or_non_scalar_values_give_no_term(data: object) -> None:
    assert search_terms({"id": "evt_1", "data": data}, ("orderId",)) == ()


def test_a_value_too_long_to_name_an_index_is_not_indexed() -> None:
    assert search_terms({"data": {"id": "x" * 201, "externalCustomerId": "c"}}, ()) == (
        "customer:c",
    )


def test_packed_terms_unpack_to_the_same_even_with_colons_and_non_ascii() -> None:
    terms = ("session:cs:1", "customer:ü 2", "metadata:orderId=a=b")

    assert unpack_terms(pack_terms(terms)) == terms


def test_a_filter_on_a_metadata_key_not_searchable_names_the_setting() -> None:
    with pytest.raises(UnsearchableKey, match="LOOPS_SEARCH_METADATA_KEYS"):
        SearchTerms.build(("orderId",), metadata=[("source", "website")])


def test_the_search_box_value_matches_any_kind_of_term() -> None:
    search = SearchTerms.build(("orderId",), text="o_1")

    assert search.held_by(["metadata:orderId=o_1"])
    assert search.held_by(["customer:o_1"])
    assert not search.held_by(["customer:o_2"])
