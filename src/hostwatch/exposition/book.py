"""The renderer's knowledge of the rows: their descriptions, their order, their label text.

`RowBook` holds what the daemon sent (hostwatch.exposition.rows) and the rows in config order;
its `generation` changes whenever any of that changes, and the renderer's caches key on it.
A row's label text is made once per description (`RowInfo`), not at every scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client.openmetrics.exposition import escape_label_name

from .rows import RowDynamic, RowStatic

__all__ = ["RowBook", "RowInfo", "escape_value", "label_text"]

# The extra label of the families written for every row sorts here in every row without
# labels of its own: after `probe` (and `ip`, `ip_protocol`), before `target`.
_MIDDLE: Final = ("reason", "stat", "state")


class RowInfo:
    """A row as the renderer uses it: its description and its label text, made once.

    ~0.8 KB a row with its description: the label text whole (`base`), and split where the
    `state` and `stat` labels go (`middle`, the same for both in a row whose only labels are
    target, ip and probe); other splits are made when asked and kept."""

    __slots__ = ("_splits", "base", "dynamic", "middle", "static")

    def __init__(self, static: RowStatic, dynamic: RowDynamic) -> None:
        self.static, self.dynamic = static, dynamic
        self.base = label_text(self.labels)
        self._splits: dict[str, tuple[str, str]] | None = None
        self.middle = self._split("stat")

    @property
    def labels(self) -> dict[str, str]:
        """The labels, as hostwatch.metrics gives them to prometheus-client."""
        static = self.static
        labels = {"target": static.target, "ip": self.dynamic.ip, "probe": static.probe}
        if static.ip_protocol:
            labels["ip_protocol"] = static.ip_protocol  # tells the two families apart
        labels.update(static.labels)
        return labels

    def split(self, key: str) -> tuple[str, str]:
        """The label text before and after the place where label `key` sorts, each with its
        comma: `{before}key="..."{after}` is the sorted label text with `key` added."""
        if key in _MIDDLE and self._plain():
            return self.middle
        splits = self._splits
        if splits is None:
            splits = self._splits = {}
        found = splits.get(key)
        if found is None:
            found = splits[key] = self._split(key)
        return found

    def _plain(self) -> bool:
        return not self.static.labels and not self.static.ip_protocol

    def _split(self, key: str) -> tuple[str, str]:
        items = sorted(self.labels.items())
        cut = sum(1 for k, _ in items if k < key)
        before, after = label_text(dict(items[:cut])), label_text(dict(items[cut:]))
        return (before + "," if before else ""), ("," + after if after else "")


def label_text(labels: dict[str, str]) -> str:
    """The labels as prometheus-client writes them between the braces: sorted, escaped."""
    return ",".join(f'{escape_label_name(k)}="{escape_value(v)}"'
                    for k, v in sorted(labels.items()))


def escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class RowBook:
    """The renderer's view of the rows: descriptions by row, and the rows in config order."""

    def __init__(self) -> None:
        self._static: dict[int, RowStatic] = {}
        self._dynamic: dict[int, RowDynamic] = {}
        self._info: dict[int, RowInfo] = {}
        self.order: tuple[int, ...] = ()
        self.generation = 0

    def describe(self, row: int, static: RowStatic | None,
                 dynamic: RowDynamic | None) -> None:
        """Set a row's description; `static` None forgets the row (its watch is gone)."""
        if static is None:
            self._static.pop(row, None)
            self._dynamic.pop(row, None)
        else:
            self._static[row] = static
            if dynamic is not None:
                self._dynamic[row] = dynamic
        self._info.pop(row, None)
        self.generation += 1

    def update(self, row: int, dynamic: RowDynamic) -> None:
        if self._dynamic.get(row) != dynamic:
            self._dynamic[row] = dynamic
            self._info.pop(row, None)
            self.generation += 1

    def set_order(self, order: Iterable[int]) -> None:
        self.order = tuple(order)
        missing = [r for r in self.order if r not in self._static]
        if missing:
            raise ValueError(f"rows {missing[:5]} are in the order but not described")
        self.generation += 1

    def prepare(self) -> None:
        """Make every row's label texts now (the renderer is idle after a sync), rather
        than at the next scrape: ~10 µs a row."""
        for _ in self.infos():
            pass

    def info(self, row: int) -> RowInfo:
        found = self._info.get(row)
        if found is None:
            found = self._info[row] = RowInfo(self._static[row], self._dynamic[row])
        return found

    def infos(self) -> Iterator[RowInfo]:
        """The rows in order."""
        return (self.info(row) for row in self.order)
