"""What the renderer knows of each row of the state table besides its numbers.

The daemon describes every watch's row in two parts: `RowStatic` changes only with the config
(names, labels, where the window and histogram are, maintenance windows) and is sent after a
reload for the rows that changed; `RowDynamic` (the address in the `ip` label, the last TLS
details, the flap history) changes rarely at run time and is sent with the next scrape for
the rows marked dirty (`StateTable.dirty`). The numbers themselves come from the snapshot.
The renderer's side of this is hostwatch.exposition.book.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from hostwatch.model import IpProtocol, MaintenanceWindow
from hostwatch.probes.base import TlsInfo

if TYPE_CHECKING:
    from hostwatch.watch import Watch

__all__ = ["RowDynamic", "RowStatic", "row_dynamic", "row_static"]


class RowStatic(NamedTuple):
    """A row's description from the config (and where its window and histogram live)."""

    target: str
    probe: str
    ip_protocol: str  # "ip4"/"ip6" for one family of a dual-stack target, else ""
    labels: tuple[tuple[str, str], ...]  # the user's, sorted
    window: tuple[int, int]  # size, slot in the table's window pool of that size
    hist_slot: int  # slot in the histogram pool of len(buckets) + 2; -1 without
    buckets: tuple[float, ...]
    maintenance: tuple[MaintenanceWindow, ...]
    flap_window: float


class RowDynamic(NamedTuple):
    """What of a row's description changes while probing."""

    ip: str
    tls: TlsInfo | None
    changes: tuple[float, ...]  # times of the last changes of the underlying state


def row_static(watch: Watch) -> RowStatic:
    st = watch.state
    dual = watch.target.ip_protocol is IpProtocol.DUAL
    return RowStatic(watch.target.name, watch.spec.kind.value,
                     watch.protocol.value if dual else "", watch.target.labels,
                     st.window_slot, st.hist_slot, st.buckets, watch.maintenance,
                     st.tracker.policy.flap_window)


def row_dynamic(watch: Watch) -> RowDynamic:
    st = watch.state
    last = st.last_result
    return RowDynamic(st.last_ip, None if last is None else last.tls, st.tracker.changes)
