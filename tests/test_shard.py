"""Sharding: n instances sharing one target list each probe a disjoint, stable subset."""

from __future__ import annotations

import hashlib
from pathlib import Path

from daemon_proc import Scrape, running
from hostwatch.model import Shard


def _reference_hashmod(name: str, total: int) -> int:
    """Prometheus' hashmod relabel action, written out: md5, last 8 bytes, big-endian."""
    digest = hashlib.md5(name.encode()).digest()  # noqa: S324 - a hash for spreading, not security
    return int.from_bytes(digest[8:], "big") % total


class TestShard:
    def test_partition_without_overlap_or_gap(self) -> None:
        """Over 3 shards, each of 1,000 names belongs to exactly one, the one hashmod says."""
        names = [f"host-{i}" for i in range(1000)]
        owners = {n: [i for i in range(3) if Shard(i, 3).owns(n)] for n in names}
        assert all(len(o) == 1 for o in owners.values())
        assert {n: [_reference_hashmod(n, 3)] for n in names} == owners
        sizes = [sum(1 for o in owners.values() if o == [i]) for i in range(3)]
        assert min(sizes) > 250  # spread: no shard starves

    def test_single_shard_owns_all(self) -> None:
        """The default (one instance) owns every target."""
        assert all(Shard().owns(f"t{i}") for i in range(100))


def _targets(scrape: Scrape) -> set[str]:
    return {d["target"] for d, _ in scrape.find("hostwatch_probe_sent_total")}


class TestTwoInstances:
    def test_two_daemons_split_one_list(self, tmp_path: Path) -> None:
        """Two daemons on one box with the same target list and shard 0/2 and 1/2 probe
        disjoint sets whose union is the whole list."""
        targets = "".join(f"  - {{name: t{i:02d}, host: 127.0.{i}.1, probes: {{icmp: }}}}\n"
                          for i in range(40))
        base = "defaults: {interval: 200ms, timeout: 150ms}\ntargets:\n" + targets
        scrapes = []
        for index in (0, 1):
            work = tmp_path / f"shard{index}"
            work.mkdir()
            config = f"shard: {{index: {index}, total: 2}}\n" + base
            with running(work, config) as daemon:
                scrapes.append(daemon.wait_for(
                    lambda s: len(_targets(s)) > 0 and all(
                        v > 0 for _, v in s.find("hostwatch_probe_sent_total")),
                    what="probing"))
        first, second = (_targets(s) for s in scrapes)
        assert set() == first & second
        assert {f"t{i:02d}" for i in range(40)} == first | second
