"""Entity key templates and the per-batch feature fetch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from worker.errors import FeatureStoreUnavailable
from worker.features.fetcher import EntitySpec, FeatureFetcher
from worker.features.keys import KeyTemplate
from worker.features.store import InMemoryFeatureStore, KeyValues


def test_key_template_with_a_top_level_field() -> None:
    template = KeyTemplate("card:{card_id}")

    assert template({"card_id": "c1"}) == "card:c1"
    assert template.paths == ["card_id"]


def test_key_template_with_nested_fields_and_several_parts() -> None:
    template = KeyTemplate("u:{user.id}:{user.country}/x")

    assert template({"user": {"id": 42, "country": "NL"}}) == "u:42:NL/x"
    assert template.paths == ["user.id", "user.country"]


@pytest.mark.parametrize("record", [{"user": None}, {"user": {"id": None, "country": "NL"}},
                                    {"user": {"id": 1, "country": None}}])
def test_key_template_is_none_where_a_part_is_null(record: dict[str, Any]) -> None:
    assert KeyTemplate("u:{user.id}:{user.country}")(record) is None


def test_key_template_of_a_whole_field() -> None:
    assert KeyTemplate("{id}")({"id": 7}) == "7"


@pytest.mark.parametrize(("template", "message"), [
    ("card", "names no event field"),
    ("card:{}", "an empty '{}' names no field"),
    ("card:{id:>8}", "format specs and conversions are not supported"),
    ("card:{id!r}", "format specs and conversions are not supported"),
    ("card:{id", "'}'"),
])
def test_bad_key_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyTemplate(template)


class RecordingStore(InMemoryFeatureStore):
    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        super().__init__(data)
        self.requests: list[list[tuple[list[str], list[str]]]] = []

    def fetch(self, requests: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[KeyValues]]:
        self.requests.append([(list(f), list(k)) for f, k in requests])
        return super().fetch(requests)


CARD = EntitySpec("card", KeyTemplate("card:{card_id}"), ("count", "sum"), {"count": 0, "sum": 0})
USER = EntitySpec("user", KeyTemplate("u:{user.id}"), ("age",), {"age": -1})


def test_fetcher_dedups_keys_and_makes_one_store_call_per_batch() -> None:
    store = RecordingStore({"card:a": {"count": 3, "sum": "1.5"}, "u:1": {"age": 30}})
    records: list[dict[str, Any]] = [{"card_id": "a", "user": {"id": 1}}, {"card_id": "b", "user": {"id": 2}},
               {"card_id": "a", "user": None}, {"card_id": "a", "user": {"id": 1}}]

    lookups = FeatureFetcher(store, [CARD, USER]).fetch(records)

    assert store.calls == 1
    assert store.requests == [[(["count", "sum"], ["card:a", "card:b"]), (["age"], ["u:1", "u:2"])]]
    card, user = lookups["card"], lookups["user"]
    assert card.index.tolist() == [0, 1, 0, 0]
    assert user.index.tolist() == [0, 1, -1, 0]
    assert card.values == [[b"3", b"1.5"], [None, None]]
    assert card.raw_column("sum") == [b"1.5", None]
    assert user.raw_column("age") == [b"30", None]


def test_fetcher_skips_the_store_when_no_record_has_a_key() -> None:
    store = RecordingStore({})

    lookups = FeatureFetcher(store, [USER]).fetch([{"user": None}, {"user": {"id": None}}])

    assert store.calls == 0
    assert lookups["user"].index.tolist() == [-1, -1]
    assert lookups["user"].keys == []


def test_fetcher_propagates_an_unavailable_store() -> None:
    store = InMemoryFeatureStore({})
    store.available = False

    with pytest.raises(FeatureStoreUnavailable):
        FeatureFetcher(store, [CARD]).fetch([{"card_id": "a"}])


def test_each_batch_is_one_call() -> None:
    store = RecordingStore({})
    fetcher = FeatureFetcher(store, [CARD, USER])

    for batch in range(3):
        fetcher.fetch([{"card_id": f"c{batch}-{i}", "user": {"id": i}} for i in range(50)])

    assert store.calls == 3
    assert [len(r[0][1]) for r in store.requests] == [50, 50, 50]
