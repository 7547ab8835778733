"""Target discovery from Prometheus file_sd files: parsing, and live changes in the daemon."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon_proc import Scrape, running
from hostwatch.config import ConfigError, parse_config, parse_target_file
from hostwatch.discovery import discover
from hostwatch.model import ProbeKind, ProbeSpec, TargetFiles

GROUP_YAML = """
defaults: {interval: 2s, timeout: 1s, labels: {site: lab}}
target_files:
  - files: [sd/*.json, sd/*.yml]
    probes: {icmp: , tcp: {port: 22}}
    interval: 500ms
    timeout: 400ms
    labels: {source: file_sd}
targets:
  - {name: static, host: 127.0.0.1, probes: {icmp: }}
"""


def _group(tmp_path: Path) -> TargetFiles:
    config = parse_config(GROUP_YAML, str(tmp_path / "hostwatch.yml"))
    (group,) = config.target_files
    return group


class TestParse:
    def test_json_groups_become_targets(self, tmp_path: Path) -> None:
        """Each host of each group is a target named as written, with the group's probes and
        settings; file labels merge over the group's, `__meta` labels are dropped; a port in
        the target goes to the tcp probe."""
        text = json.dumps([
            {"targets": ["127.0.0.5", "127.0.0.6:8080"],
             "labels": {"role": "db", "__meta_source": "x"}},
            {"targets": ["[::1]:443", "::1"]},
        ])
        targets = parse_target_file(text, "sd/a.json", _group(tmp_path), {})
        assert ["127.0.0.5", "127.0.0.6:8080", "[::1]:443", "::1"] == [t.name for t in targets]
        assert ["127.0.0.5", "127.0.0.6", "::1", "::1"] == [t.host for t in targets]
        assert (ProbeSpec(ProbeKind.ICMP), ProbeSpec(ProbeKind.TCP, 22)) == targets[3].probes
        assert (ProbeSpec(ProbeKind.ICMP), ProbeSpec(ProbeKind.TCP, 8080)) == targets[1].probes
        assert (ProbeSpec(ProbeKind.ICMP), ProbeSpec(ProbeKind.TCP, 22)) == targets[0].probes
        assert (("role", "db"), ("site", "lab"), ("source", "file_sd")) == targets[0].labels
        assert (0.5, 0.4) == (targets[0].interval, targets[0].timeout)

    def test_yaml_file_and_problems_with_location(self, tmp_path: Path) -> None:
        """YAML works too; a bad host and a duplicate name are reported with file:line:col."""
        text = "- targets: [127.0.0.7, 'bad host', static]\n  labels: {9x: y}\n"
        with pytest.raises(ConfigError) as caught:
            parse_target_file(text, "sd/b.yml", _group(tmp_path), {"static": "hostwatch.yml:9"})
        lines = str(caught.value).splitlines()
        assert 3 == len(lines)
        assert lines[0].startswith("sd/b.yml:1:24: [0].targets[1]: 'bad host'")
        assert lines[1].startswith("sd/b.yml:1:36: [0].targets[2]: 'static' is already a "
                                   "target (hostwatch.yml:9)")
        assert lines[2].startswith("sd/b.yml:2:12: [0].labels: '9x'")

    def test_not_a_list(self, tmp_path: Path) -> None:
        """A file that is not a list of groups says what to write."""
        with pytest.raises(ConfigError, match=r"sd/c.json:1:1: expected a list of target "
                                              r"groups, got a mapping"):
            parse_target_file('{"targets": []}', "sd/c.json", _group(tmp_path), {})

    def test_discover_globs_relative_to_the_config(self, tmp_path: Path) -> None:
        """Globs are relative to the config file's directory; matched files add targets."""
        (tmp_path / "sd").mkdir()
        (tmp_path / "sd" / "a.json").write_text('[{"targets": ["127.0.0.9"]}]')
        (tmp_path / "sd" / "ignored.txt").write_text("not matched")
        config = discover(parse_config(GROUP_YAML, str(tmp_path / "hostwatch.yml")))
        assert ["static", "127.0.0.9"] == [t.name for t in config.targets]


def _names(scrape: Scrape) -> set[str]:
    return {d["target"] for d, _ in scrape.find("hostwatch_probe_sent_total")}


class TestLiveDiscovery:
    def test_files_applied_without_restart(self, tmp_path: Path) -> None:
        """A new file's targets appear, a broken file is rejected (old targets kept, reload
        metric 0), and fixing it applies again — all without a restart or SIGHUP."""
        sd = tmp_path / "sd"
        sd.mkdir()
        (sd / "a.json").write_text('[{"targets": ["127.0.0.5"]}]')
        config = ("target_files:\n  - files: [sd/*.json]\n    probes: {icmp: }\n"
                  "    refresh: 1s\n    interval: 200ms\n    timeout: 150ms\n"
                  "targets:\n  - {name: static, host: 127.0.0.1, probes: {icmp: }, "
                  "interval: 200ms, timeout: 150ms}\n")
        with running(tmp_path, config) as daemon:
            daemon.wait_for(lambda s: _names(s) == {"static", "127.0.0.5"}, what="first file")
            (sd / "b.json").write_text('[{"targets": ["127.0.0.6"], "labels": {"r": "x"}}]')
            daemon.wait_for(lambda s: _names(s) == {"static", "127.0.0.5", "127.0.0.6"},
                            what="second file")
            (sd / "b.json").write_text('[{"targets": ["not a host!"]}]')
            _bump(sd / "b.json")
            bad = daemon.wait_for(
                lambda s: s.value("hostwatch_config_last_reload_successful") == 0,
                what="rejected file")
            assert {"static", "127.0.0.5", "127.0.0.6"} == _names(bad)
            (sd / "b.json").write_text('[{"targets": ["127.0.0.8"]}]')
            _bump(sd / "b.json")
            daemon.wait_for(lambda s: _names(s) == {"static", "127.0.0.5", "127.0.0.8"}
                            and s.value("hostwatch_config_last_reload_successful") == 1,
                            what="fixed file")
        assert "b.json:1:15: [0].targets[0]: 'not a host!'" in daemon.stderr()


def _bump(path: Path) -> None:
    """Make sure the mtime changes even within the filesystem's timestamp granularity."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
