"""observekit._memo.remembered: the per-process tables the adapters keep."""

from __future__ import annotations

from observekit._memo import remembered


def test_a_value_is_built_once_and_the_table_stops_at_its_limit() -> None:
    """Each key is built once while there is room; past the limit values are still right
    but no longer kept; an unhashable key is built each time."""
    built: list[object] = []

    def build(key: object) -> str:
        built.append(key)
        return repr(key)

    table: dict[object, str] = {}
    for _ in range(2):
        for n in range(5):
            assert remembered(table, n, build, 3) == repr(n)
    assert built == [0, 1, 2, 3, 4, 3, 4]
    assert list(table) == [0, 1, 2]
    assert remembered(table, ["x"], build, 3) == "['x']"
    assert remembered(table, ["x"], build, 3) == "['x']"
    assert built[-2:] == [["x"], ["x"]]
    assert len(table) == 3
