"""Hypothesis strategies for fuzzing parsers of JSON documents (configs, encodings).

Two kinds of input find different bugs: random JSON values test the outer type checks, and
valid documents with a few parts replaced or deleted reach the checks deep inside. Requires the
``hypothesis`` test dependency.

Example:
    >>> values = json_values()
    >>> @given(mutated([valid_document], values))
    ... def test_parser(doc): ...
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

from hypothesis import strategies as st

__all__ = ["json_values", "mutated"]


def json_values(
    scalars: Sequence[Any] = (), keys: Sequence[str] = (), max_leaves: int = 12
) -> st.SearchStrategy:
    """Random JSON values: null, booleans, numbers (also huge, NaN and infinite), strings,
    lists and objects, nested.

    Args:
        scalars: extra scalar values to draw often (e.g. the strings a format uses).
        keys: extra object keys to draw often (e.g. the format's own keys).
        max_leaves: size bound of one value.
    """
    leaves = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
    if scalars:
        leaves = leaves | st.sampled_from(list(scalars))
    key = st.text(max_size=6) | st.sampled_from(list(keys)) if keys else st.text(max_size=6)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=4),
        max_leaves=max_leaves,
    )


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (tuple of keys / indices) into ``value``, the empty path included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


@st.composite
def mutated(draw, documents: Sequence[Any], values: st.SearchStrategy, max_edits: int = 3) -> Any:
    """A deep copy of one of ``documents`` with 1..``max_edits`` parts replaced by a drawn
    value or (object members) deleted; replacing the empty path replaces the whole document."""
    doc = copy.deepcopy(draw(st.sampled_from(list(documents))))
    for _ in range(draw(st.integers(1, max_edits))):
        path = draw(st.sampled_from(list(_paths(doc))))
        if not path:
            return draw(values)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return doc
