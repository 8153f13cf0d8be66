"""The neighbouring relation a guarantee is stated under."""

from __future__ import annotations

from enum import Enum

from dp_accounting import NeighboringRelation

from tdpdm.choices import ADJACENCY_WORDS


class Adjacency(str, Enum):
    """`add_remove`: one record added or removed. `replace_one`: one record's value replaced,
    the number of records public; the only relation under which a per-record release is DP."""

    ADD_REMOVE = "add_remove"
    REPLACE_ONE = "replace_one"

    @classmethod
    def parse(cls, value: str | Adjacency) -> Adjacency:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown adjacency {value!r}; expected 'add_remove' or 'replace_one'"
            ) from None

    def to_dp_accounting(self) -> NeighboringRelation:
        if self is Adjacency.ADD_REMOVE:
            return NeighboringRelation.ADD_OR_REMOVE_ONE
        return NeighboringRelation.REPLACE_ONE

    def in_words(self) -> str:
        return ADJACENCY_WORDS[self.value]
