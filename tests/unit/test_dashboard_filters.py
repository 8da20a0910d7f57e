"""The dashboard's dead-letter filters, from a query string and from a JSON body alike."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from loops_webhooks.dashboard import queries
from loops_webhooks.dashboard.errors import BadRequest


def test_metadata_pairs_come_from_a_repeated_query_parameter_or_a_body_list() -> None:
    query = MultiDict([("metadata", "orderId:1"), ("metadata", "orderId:2")])
    body = {"metadata": ["orderId:1", "orderId:2"], "customer": "c_1"}

    from_query = queries.dead_letter_filter(query)
    from_body = queries.dead_letter_filter(body)

    assert from_query.metadata == from_body.metadata == (("orderId", "1"), ("orderId", "2"))
    assert from_body.customer_id == "c_1"
    assert queries.dead_letter_filter({"metadata": "orderId:1"}).metadata == (("orderId", "1"),)


def test_a_metadata_value_in_a_body_that_is_not_key_colon_value_is_refused() -> None:
    with pytest.raises(BadRequest, match="not KEY:VALUE"):
        queries.dead_letter_filter({"metadata": ["orderId"]})
    with pytest.raises(BadRequest, match="must be a string"):
        queries.dead_letter_filter({"metadata": [7]})
