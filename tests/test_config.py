"""The configuration loader: YAML → `Config`, strict, every problem located and explained.

Most bad snippets are built by `_target()`, whose layout is fixed so columns are predictable:

    1  targets:
    2    - name: a                  name value at column 11
    3      host: 127.0.0.1          host value at column 11
    4      probes: {icmp: {}}       probes value at column 13
    5      <extra line 1>           extra keys at column 5, so `interval: x` has x at column 15
"""

from __future__ import annotations

import pickle
import re
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostwatch.config
from hostwatch.config import (
    DEFAULT_CONFIG_YAML,
    ConfigError,
    Problem,
    default_config,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from hostwatch.model import (
    DEFAULTS,
    Config,
    IcmpMode,
    IcmpSettings,
    IpProtocol,
    MaintenanceWindow,
    ProbeKind,
    ProbeSpec,
    SourceLocation,
    TargetConfig,
)

HERE = Path(__file__).parent
FULL_EXAMPLE = HERE / "configs" / "full.yml"
DOCS = HERE.parent / "docs" / "configuration.md"
SOURCE = "hostwatch.yml"
ICMP = ProbeSpec(ProbeKind.ICMP)


def _target(
    *extra: str, name: str = "a", host: str = "127.0.0.1", probes: str = "{icmp: {}}"
) -> str:
    """A one-target file in the layout of the module docstring, with `extra` target keys."""
    lines = ["targets:", f"  - name: {name}", f"    host: {host}", f"    probes: {probes}"]
    return "\n".join([*lines, *(f"    {line}" for line in extra)]) + "\n"


def _problems(text: str) -> str:
    """The full message of the ConfigError that parsing `text` raises."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    return str(caught.value)


def _only_target(text: str) -> TargetConfig:
    """The single target of a valid file."""
    (target,) = parse_config(text, SOURCE).targets
    return target


H = "hostwatch.yml"
TOP_KEYS = (
    "`defaults`, `icmp`, `dns_refresh`, `dns_servers`, `histogram_buckets`, `maintenance`,"
    " `shard`, `target_files`, `targets`"
)
TARGET_KEYS = (
    "`name`, `host`, `probes`, `interval`, `timeout`, `failure_threshold`, `success_threshold`,"
    " `window`, `ip_protocol`, `labels`, `degraded_loss_ratio`, `degraded_rtt`, `flap_window`,"
    " `flap_start`, `flap_stop`, `rtt_histogram`"
)
DURATION_FORMAT = (
    "write whole numbers with units ms, s, m, h, d, w, y from largest to smallest,"
    " such as 1m30s or 500ms"
)
NAME_RULE = "use only letters, digits and . _ : @ / + -, starting with a letter or digit"
DNS_RULE = "write an IP address or a DNS name of letters, digits, '-' and '.'"

MAINTENANCE = (
    "maintenance:\n  - name: w\n    start: 2026-11-23T10:00:00Z\n    end: 2026-11-23T12:00:00Z\n"
)

BAD_CONFIGS = [
    # --- unknown keys, at every level ---
    pytest.param(
        "targets: []\ntarget: []\n",
        f"{H}:2:1: unknown key 'target'; did you mean `targets`?",
        id="unknown-top-key",
    ),
    pytest.param(
        "targets: []\nzzz: 1\n",
        f"{H}:2:1: unknown key 'zzz'; remove it or use one of {TOP_KEYS}",
        id="unknown-top-key-no-guess",
    ),
    pytest.param(
        "defaults:\n  intervall: 2s\ntargets: []\n",
        f"{H}:2:3: defaults: unknown key 'intervall'; did you mean `interval`?",
        id="unknown-defaults-key",
    ),
    pytest.param(
        "icmp:\n  payload: 64\ntargets: []\n",
        f"{H}:2:3: icmp: unknown key 'payload'; did you mean `payload_size`?",
        id="unknown-icmp-key",
    ),
    pytest.param(
        _target("colour: red"),
        f"{H}:5:5: targets[0]: unknown key 'colour'; remove it or use one of {TARGET_KEYS}",
        id="unknown-target-key",
    ),
    pytest.param(
        _target(probes="{icmp: {}, http: {}}"),
        f"{H}:4:24: targets[0].probes: unknown key 'http'; remove it or use one of `icmp`, `tcp`,"
        " `udp`, `dns`",
        id="unknown-probe-kind",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 22, prot: 1}}"),
        f"{H}:4:30: targets[0].probes.tcp: unknown key 'prot'; did you mean `port`?",
        id="unknown-tcp-key",
    ),
    pytest.param(
        _target(probes="{icmp: {count: 3}}"),
        f"{H}:4:21: targets[0].probes.icmp: unknown key 'count';"
        " remove it (this takes no options yet)",
        id="unknown-icmp-probe-key",
    ),
    # --- ranges, both bounds ---
    pytest.param(
        _target("interval: 50ms"),
        f"{H}:5:15: targets[0].interval: 50ms is shorter than the minimum 100ms;"
        " set interval to at least 100ms",
        id="interval-below",
    ),
    pytest.param(
        _target("interval: 2h"),
        f"{H}:5:15: targets[0].interval: 2h is longer than the maximum 1h;"
        " set interval to at most 1h",
        id="interval-above",
    ),
    pytest.param(
        "defaults:\n  timeout: 5ms\ntargets: []\n",
        f"{H}:2:12: defaults.timeout: 5ms is shorter than the minimum 10ms;"
        " set timeout to at least 10ms",
        id="timeout-below",
    ),
    pytest.param(
        "defaults:\n  interval: 1h\n  timeout: 61s\ntargets: []\n",
        f"{H}:3:12: defaults.timeout: 1m1s is longer than the maximum 1m;"
        " set timeout to at most 1m",
        id="timeout-above",
    ),
    pytest.param(
        _target("failure_threshold: 0"),
        f"{H}:5:24: targets[0].failure_threshold: 0 is out of range;"
        " use a whole number from 1 to 1000",
        id="failure-threshold-below",
    ),
    pytest.param(
        _target("failure_threshold: 1001"),
        f"{H}:5:24: targets[0].failure_threshold: 1001 is out of range;"
        " use a whole number from 1 to 1000",
        id="failure-threshold-above",
    ),
    pytest.param(
        "defaults:\n  success_threshold: 0\ntargets: []\n",
        f"{H}:2:22: defaults.success_threshold: 0 is out of range;"
        " use a whole number from 1 to 1000",
        id="success-threshold-below",
    ),
    pytest.param(
        "defaults:\n  success_threshold: 1001\ntargets: []\n",
        f"{H}:2:22: defaults.success_threshold: 1001 is out of range;"
        " use a whole number from 1 to 1000",
        id="success-threshold-above",
    ),
    pytest.param(
        _target("window: 0"),
        f"{H}:5:13: targets[0].window: 0 is out of range; use a whole number from 1 to 10000",
        id="window-below",
    ),
    pytest.param(
        _target("window: 10001"),
        f"{H}:5:13: targets[0].window: 10001 is out of range; use a whole number from 1 to 10000",
        id="window-above",
    ),
    pytest.param(
        "icmp:\n  payload_size: 15\ntargets: []\n",
        f"{H}:2:17: icmp.payload_size: 15 is out of range; use a whole number from 16 to 1472",
        id="payload-size-below",
    ),
    pytest.param(
        "icmp:\n  payload_size: 1473\ntargets: []\n",
        f"{H}:2:17: icmp.payload_size: 1473 is out of range; use a whole number from 16 to 1472",
        id="payload-size-above",
    ),
    pytest.param(
        "dns_refresh: 500ms\ntargets: []\n",
        f"{H}:1:14: dns_refresh: 500ms is shorter than the minimum 1s;"
        " set dns_refresh to at least 1s",
        id="dns-refresh-below",
    ),
    pytest.param(
        "dns_refresh: 2d\ntargets: []\n",
        f"{H}:1:14: dns_refresh: 2d is longer than the maximum 1d; set dns_refresh to at most 1d",
        id="dns-refresh-above",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 0}}"),
        f"{H}:4:26: targets[0].probes.tcp.port: 0 is out of range;"
        " use a whole number from 1 to 65535",
        id="port-0",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 65536}}"),
        f"{H}:4:26: targets[0].probes.tcp.port: 65536 is out of range;"
        " use a whole number from 1 to 65535",
        id="port-65536",
    ),
    # --- wrong types ---
    pytest.param(
        _target("failure_threshold: true"),
        f"{H}:5:24: targets[0].failure_threshold: expected an integer, got a boolean (true);"
        " write a whole number from 1 to 1000",
        id="bool-as-int",
    ),
    pytest.param(
        _target('window: "100"'),
        f"{H}:5:13: targets[0].window: expected an integer, got a string ('100');"
        " write a whole number from 1 to 10000",
        id="string-as-int",
    ),
    pytest.param(
        "icmp:\n  payload_size: 56.0\ntargets: []\n",
        f"{H}:2:17: icmp.payload_size: expected an integer, got a number (56.0);"
        " write a whole number from 16 to 1472",
        id="float-as-int",
    ),
    pytest.param(
        _target(probes="{tcp: {port: ssh}}"),
        f"{H}:4:26: targets[0].probes.tcp.port: expected an integer, got a string ('ssh');"
        " write a whole number from 1 to 65535",
        id="port-as-service-name",
    ),
    pytest.param(
        _target("ip_protocol: ipv4"),
        f"{H}:5:18: targets[0].ip_protocol: 'ipv4' is not one of `auto`, `ip4`, `ip6`, `dual`;"
        " did you mean `ip4`?",
        id="ip-protocol-unknown",
    ),
    pytest.param(
        "icmp:\n  mode: rawsock\ntargets: []\n",
        f"{H}:2:9: icmp.mode: 'rawsock' is not one of `auto`, `raw`, `dgram`; did you mean `raw`?",
        id="icmp-mode-unknown",
    ),
    pytest.param(
        "- targets\n",
        f"{H}:1:1: expected a mapping, got a list; write `key: value` lines such as `targets: []`",
        id="top-level-list",
    ),
    pytest.param(
        "# only a comment\n",
        f"{H}: the file has no YAML document; write at least `targets: []`",
        id="empty-file",
    ),
    pytest.param(
        "defaults: {}\n",
        f"{H}:1:1: missing required key `targets`; add a list of targets (`targets: []` for none)",
        id="targets-missing",
    ),
    pytest.param(
        "targets:\n",
        f"{H}:1:9: targets: expected a list, got null; write `- name: ...` items",
        id="targets-null",
    ),
    pytest.param(
        "targets:\n  - db1\n",
        f"{H}:2:5: targets[0]: expected a mapping with `name`, `host` and `probes`,"
        " got a string ('db1'); write the target as `name:`, `host:` and `probes:` keys",
        id="target-not-a-mapping",
    ),
    pytest.param(
        "defaults: 5\ntargets: []\n",
        f"{H}:1:11: defaults: expected a mapping of default target settings,"
        " got an integer (5); see docs/configuration.md for its keys",
        id="defaults-not-a-mapping",
    ),
    pytest.param(
        _target(probes="{icmp: true}"),
        f"{H}:4:20: targets[0].probes.icmp: expected an empty mapping, got a boolean (true);"
        " write `icmp: {}` (icmp probes have no options yet)",
        id="icmp-probe-not-a-mapping",
    ),
    pytest.param(
        _target(name="123"),
        f'{H}:2:11: targets[0].name: expected a string, got an integer (123); quote it: "123"',
        id="name-is-a-number",
    ),
    pytest.param(
        _target(name="2024-01-01"),
        f"{H}:2:11: targets[0].name: expected a string, got a date (2024-01-01);"
        ' quote it: "2024-01-01"',
        id="name-is-a-date",
    ),
    pytest.param(
        "targets: []\n1: x\n",
        f'{H}:2:1: keys must be strings, got an integer (1); quote the key: "1"',
        id="non-string-key",
    ),
    # --- required keys, duplicates ---
    pytest.param(
        "targets:\n  - host: ::1\n    probes: {icmp: {}}\n",
        f"{H}:2:5: targets[0]: missing required key `name`; add a unique `name`,"
        " such as `name: db1`",
        id="name-missing",
    ),
    pytest.param(
        "targets:\n  - name: a\n    probes: {icmp: {}}\n",
        f"{H}:2:5: targets[0]: missing required key `host`; add the address or DNS name"
        " to probe, such as `host: ::1`",
        id="host-missing",
    ),
    pytest.param(
        "targets:\n  - name: a\n    host: ::1\n",
        f"{H}:2:5: targets[0]: missing required key `probes`; add at least one probe,"
        " such as `probes: {icmp: {}}`",
        id="probes-missing",
    ),
    pytest.param(
        _target(probes="{}"),
        f"{H}:4:13: targets[0].probes: no probes; add at least one of `icmp`, `tcp`, `udp`,"
        " `dns`, such as `icmp: {}`",
        id="empty-probes",
    ),
    pytest.param(
        _target(probes="{tcp: {}}"),
        f"{H}:4:19: targets[0].probes.tcp: missing required key `port`;"
        " add the TCP port to connect to, such as `port: 22`",
        id="tcp-without-port",
    ),
    pytest.param(
        _target() + "  - name: a\n    host: ::1\n    probes: {icmp: {}}\n",
        f"{H}:5:11: targets[1].name: duplicate target name 'a' (first at line 2, column 11);"
        " give every target a unique name",
        id="duplicate-target-names",
    ),
    pytest.param(
        _target("interval: 2s", "interval: 3s"),
        f"{H}:6:5: targets[0]: duplicate key 'interval' (first at line 5, column 5);"
        " keep only one",
        id="duplicate-yaml-keys",
    ),
    # --- YAML syntax and unsafe YAML features ---
    pytest.param(
        "targets:\n\t- name: a\n",
        f"{H}:2:1: invalid YAML: found character '\\t' that cannot start any token"
        " (while scanning for the next token); indent with spaces, not tabs",
        id="tab-indent",
    ),
    pytest.param(
        "targets: [\n",
        f"{H}:2:1: invalid YAML: expected the node content, but found '<stream end>'"
        " (while parsing a flow node); check the indentation, quotes and colons here",
        id="syntax-error",
    ),
    pytest.param(
        "targets: []\n---\ntargets: []\n",
        f"{H}:2:1: invalid YAML: expected a single document in the stream, but found another"
        " document; remove the `---` line, hostwatch reads one document",
        id="two-documents",
    ),
    pytest.param(
        "targets: []\n# \x07\n",
        f"{H}:2:3: the character '\\x07' is not allowed in a YAML file; remove it",
        id="raw-control-character",
    ),
    pytest.param(
        "defaults: &d {interval: 2s}\ntargets: []\nicmp: *d\n",
        f"{H}:1:11: defaults: YAML anchors (`&d`) are not allowed; write the value out in full\n"
        f"{H}:3:7: icmp: YAML aliases (`*d`) are not allowed; write the value out in full",
        id="anchor-and-alias",
    ),
    pytest.param(
        "targets:\n  - <<: {name: a}\n    host: ::1\n    probes: {icmp: {}}\n",
        f"{H}:2:5: targets[0]: YAML merge keys (`<<`) are not allowed;"
        " write the keys out in full\n"
        f"{H}:2:5: targets[0]: missing required key `name`; add a unique `name`,"
        " such as `name: db1`",
        id="merge-key",
    ),
    pytest.param(
        _target(host="!env HOST"),
        f"{H}:3:11: targets[0].host: the YAML tag '!env' is not supported; remove the tag",
        id="custom-tag",
    ),
    pytest.param(
        "targets: " + "[" * 100 + "]" * 100 + "\n",
        f"{H}:1:73: the YAML nests deeper than 64 levels, a configuration needs 5;"
        " check the brackets",
        id="deep-nesting",
    ),
    # --- timeout against interval, after merging with defaults ---
    pytest.param(
        _target("timeout: 2s"),
        f"{H}:5:14: targets[0].timeout: 2s is longer than the interval 1s"
        " (the built-in default); set timeout to at most the interval",
        id="timeout-over-builtin-interval",
    ),
    pytest.param(
        "defaults:\n  interval: 5s\n  timeout: 2s\n" + _target("interval: 1s"),
        f"{H}:8:15: targets[0].interval: 1s is shorter than the timeout 2s"
        " (from defaults.timeout); set timeout to at most 1s here too, or use a longer interval",
        id="target-interval-under-defaults-timeout",
    ),
    pytest.param(
        "defaults:\n  interval: 5s\n" + _target("timeout: 6s"),
        f"{H}:7:14: targets[0].timeout: 6s is longer than the interval 5s"
        " (from defaults.interval); set timeout to at most the interval",
        id="target-timeout-over-defaults-interval",
    ),
    pytest.param(
        "defaults:\n  interval: 500ms\ntargets: []\n",
        f"{H}:2:13: defaults.interval: 500ms is shorter than the timeout 1s"
        " (the built-in default); set timeout to at most 500ms here too,"
        " or use a longer interval",
        id="defaults-interval-under-builtin-timeout",
    ),
    # --- labels ---
    pytest.param(
        _target("labels: {instance: x}"),
        f"{H}:5:14: targets[0].labels: 'instance' is a label hostwatch sets itself;"
        " choose another name",
        id="reserved-label",
    ),
    pytest.param(
        _target("labels: {__meta: y}"),
        f"{H}:5:14: targets[0].labels: '__meta' starts with `__`, which Prometheus reserves;"
        " rename it",
        id="double-underscore-label",
    ),
    pytest.param(
        _target("labels: {1rack: a}"),
        f"{H}:5:14: targets[0].labels: '1rack' is not a valid label name;"
        " use letters, digits and _, not starting with a digit",
        id="bad-label-name",
    ),
    pytest.param(
        _target("labels: {rack: 12}"),
        f'{H}:5:20: targets[0].labels.rack: expected a string, got an integer (12); quote it: "12"',
        id="numeric-label-value",
    ),
    pytest.param(
        _target("labels: {ssd: yes}"),
        f"{H}:5:19: targets[0].labels.ssd: expected a string, got a boolean (yes);"
        ' quote it: "yes"',
        id="boolean-label-value",
    ),
    pytest.param(
        _target("labels: {on: x}"),
        f"{H}:5:14: targets[0].labels: keys must be strings, got a boolean (on);"
        ' quote the key: "on"',
        id="boolean-label-name",
    ),
    pytest.param(
        _target('labels: {rack: "a\\nb"}'),
        f"{H}:5:20: targets[0].labels.rack: 'a\\nb' contains the control character '\\n';"
        " remove it",
        id="label-value-control-character",
    ),
    pytest.param(
        _target("labels: {rack: " + "x" * 1025 + "}"),
        f"{H}:5:20: targets[0].labels.rack: '{'x' * 56}... is 1025 characters long;"
        " use at most 1024",
        id="label-value-too-long",
    ),
    pytest.param(
        _target("labels: [a, b]"),
        f"{H}:5:13: targets[0].labels: expected a mapping of label names to strings, got a list;"
        " see docs/configuration.md for its keys",
        id="labels-not-a-mapping",
    ),
    # --- names and hosts: hostile strings are shown escaped and cut to 60 characters ---
    pytest.param(
        _target(name="n" * 10000),
        f"{H}:2:11: targets[0].name: '{'n' * 56}... is 10000 characters long; use at most 128",
        id="name-10000-characters",
    ),
    pytest.param(
        _target(name='"db1;rm -rf /"'),
        f"{H}:2:11: targets[0].name: 'db1;rm -rf /' is not a valid name: ';' is not allowed"
        f" here; {NAME_RULE}",
        id="name-with-shell-command",
    ),
    pytest.param(
        _target(name='"$(reboot)"'),
        f"{H}:2:11: targets[0].name: '$(reboot)' is not a valid name: '$' is not allowed"
        f" here; {NAME_RULE}",
        id="name-with-command-substitution",
    ),
    pytest.param(
        _target(name="-db"),
        f"{H}:2:11: targets[0].name: '-db' is not a valid name: '-' is not allowed here;"
        f" {NAME_RULE}",
        id="name-starting-with-dash",
    ),
    pytest.param(
        _target(host='"db\\x07"'),
        f"{H}:3:11: targets[0].host: 'db\\x07' is not a valid host name:"
        f" '\\x07' is not allowed; {DNS_RULE}",
        id="host-with-bell-character",
    ),
    pytest.param(
        _target(host='"db1`id`"'),
        f"{H}:3:11: targets[0].host: 'db1`id`' is not a valid host name: '`' is not allowed;"
        f" {DNS_RULE}",
        id="host-with-backticks",
    ),
    pytest.param(
        _target(host="999.1.1.1"),
        f"{H}:3:11: targets[0].host: '999.1.1.1' is not a valid IPv4 address;"
        " write four numbers from 0 to 255 without leading zeros, such as 127.0.0.1",
        id="host-ipv4-out-of-range",
    ),
    pytest.param(
        _target(host='"[::1]"'),
        f"{H}:3:11: targets[0].host: '[::1]' has brackets; write the address without them",
        id="host-ipv6-in-brackets",
    ),
    pytest.param(
        _target(host="localhost:22"),
        f"{H}:3:11: targets[0].host: 'localhost:22' is not a valid IPv6 address;"
        " write one such as ::1 (a port belongs in probes.tcp.port, not in host)",
        id="host-with-port",
    ),
    pytest.param(
        _target(host='"fe80::1%lo"'),
        f"{H}:3:11: targets[0].host: 'fe80::1%lo' has a zone id; zone ids are not supported,"
        " remove it",
        id="host-ipv6-zone-id",
    ),
    pytest.param(
        _target(host="db_1.localdomain"),
        f"{H}:3:11: targets[0].host: 'db_1.localdomain' is not a valid host name:"
        f" '_' is not allowed; {DNS_RULE}",
        id="host-underscore",
    ),
    pytest.param(
        _target(host="a" * 64 + ".localdomain"),
        f"{H}:3:11: targets[0].host: '{'a' * 56}... is not a valid host name:"
        f" a label is longer than 63 characters; {DNS_RULE}",
        id="host-label-too-long",
    ),
    pytest.param(
        _target(host="db-.localdomain"),
        f"{H}:3:11: targets[0].host: 'db-.localdomain' is not a valid host name:"
        f" the label 'db-' starts or ends with '-'; {DNS_RULE}",
        id="host-label-ends-with-dash",
    ),
    # --- durations ---
    pytest.param(
        _target('interval: "5 s"'),
        f"{H}:5:15: targets[0].interval: '5 s' is not a valid duration; {DURATION_FORMAT}",
        id="duration-with-space",
    ),
    pytest.param(
        _target("interval: 1.5s"),
        f"{H}:5:15: targets[0].interval: '1.5s' is not a valid duration; {DURATION_FORMAT}",
        id="duration-with-fraction",
    ),
    pytest.param(
        _target("interval: 1s1m"),
        f"{H}:5:15: targets[0].interval: '1s1m' is not a valid duration; {DURATION_FORMAT}",
        id="duration-small-unit-first",
    ),
    pytest.param(
        _target('interval: "5"'),
        f"{H}:5:15: targets[0].interval: '5' has no unit; write 5s for seconds,"
        " or 5 without quotes",
        id="duration-quoted-number",
    ),
    pytest.param(
        _target("interval: yes"),
        f"{H}:5:15: targets[0].interval: expected a duration, got a boolean (yes);"
        " write one such as 2s, 500ms or 1m30s",
        id="duration-boolean",
    ),
    pytest.param(
        _target("timeout: -1"),
        f"{H}:5:14: targets[0].timeout: -1 is negative; durations must be 0 or more seconds",
        id="duration-negative",
    ),
    # --- histogram buckets ---
    pytest.param(
        "histogram_buckets: [0.1, 0.5, 0.5, 0.2]\ntargets: []\n",
        f"{H}:1:31: histogram_buckets[2]: 0.5 is not above the previous bound 0.5;"
        " list the bounds in strictly increasing order\n"
        f"{H}:1:36: histogram_buckets[3]: 0.2 is not above the previous bound 0.5;"
        " list the bounds in strictly increasing order",
        id="buckets-not-increasing",
    ),
    pytest.param(
        "histogram_buckets: []\ntargets: []\n",
        f"{H}:1:20: histogram_buckets: no buckets; give 1 to 40 upper bounds in seconds",
        id="buckets-empty",
    ),
    pytest.param(
        f"histogram_buckets: [{', '.join(str(n) for n in range(1, 42))}]\ntargets: []\n",
        f"{H}:1:20: histogram_buckets: 41 buckets are too many;"
        " give 1 to 40 upper bounds in seconds",
        id="buckets-too-many",
    ),
    pytest.param(
        "histogram_buckets: [0, 1]\ntargets: []\n",
        f"{H}:1:21: histogram_buckets[0]: 0 is not positive; use a bound above 0",
        id="bucket-zero",
    ),
    pytest.param(
        "histogram_buckets: [1, .inf]\ntargets: []\n",
        f"{H}:1:24: histogram_buckets[1]: .inf is not a valid bound;"
        " remove it, the +Inf bucket is implied",
        id="bucket-infinite",
    ),
    pytest.param(
        "histogram_buckets: [1ms]\ntargets: []\n",
        f"{H}:1:21: histogram_buckets[0]: expected a number, got a string ('1ms');"
        " write seconds without unit or quotes",
        id="bucket-with-unit",
    ),
    pytest.param(
        _target("degraded_loss_ratio: 1.5"),
        f"{H}:5:26: targets[0].degraded_loss_ratio: 1.5 is out of range;"
        " write a number from 0.001 to 1, such as 0.1 for 10%",
        id="degraded-loss-too-high",
    ),
    pytest.param(
        _target("degraded_loss_ratio: 0"),
        f"{H}:5:26: targets[0].degraded_loss_ratio: 0 is out of range;"
        " write a number from 0.001 to 1, such as 0.1 for 10%",
        id="degraded-loss-zero",
    ),
    pytest.param(
        _target('degraded_loss_ratio: "10%"'),
        f"{H}:5:26: targets[0].degraded_loss_ratio: expected a number, got a string ('10%');"
        " write a number from 0.001 to 1, such as 0.1 for 10%",
        id="degraded-loss-percent-string",
    ),
    pytest.param(
        _target("flap_window: 5s"),
        f"{H}:5:18: targets[0].flap_window: 5s is shorter than the minimum 10s;"
        " set flap_window to at least 10s",
        id="flap-window-short",
    ),
    pytest.param(
        _target("flap_start: 3", "flap_stop: 3"),
        f"{H}:6:16: targets[0].flap_stop: flap_stop 3 is not below flap_start 3; flapping must"
        " end at fewer transitions than it starts, e.g. flap_start: 6 and flap_stop: 2",
        id="flap-stop-not-below-start",
    ),
    pytest.param(
        "defaults: {flap_stop: 7}\n" + _target(),
        f"{H}:1:23: defaults.flap_stop: flap_stop 7 is not below flap_start 6; flapping must"
        " end at fewer transitions than it starts, e.g. flap_start: 6 and flap_stop: 2",
        id="flap-stop-default-start",
    ),
    pytest.param(
        _target("flap_start: 1"),
        f"{H}:5:17: targets[0].flap_start: 1 is out of range; use a whole number from 2 to 1000",
        id="flap-start-one",
    ),
    pytest.param(
        "dns_servers: [ns1.lab]\n" + _target(),
        f"{H}:1:15: dns_servers[0]: 'ns1.lab' is not an IP address;"
        " name servers are given by address",
        id="dns-server-name",
    ),
    pytest.param(
        "dns_servers: 127.0.0.53\n" + _target(),
        f"{H}:1:14: dns_servers: expected a list of at most 8 addresses, got a string"
        " ('127.0.0.53'); write a list of name server addresses, such as [127.0.0.53]",
        id="dns-servers-not-list",
    ),
    pytest.param(
        _target() + MAINTENANCE,
        f"{H}:6:5: maintenance[0]: selects no target; add `targets:` or `match_labels:`",
        id="maintenance-no-selector",
    ),
    pytest.param(
        _target() + MAINTENANCE + "    targets: [nope]\n",
        f"{H}:9:15: maintenance[0].targets[0]: no target is named 'nope';"
        " use the `name` of a target in this file",
        id="maintenance-unknown-target",
    ),
    pytest.param(
        _target() + "maintenance:\n  - name: w\n    start: 2026-11-23 10:00:00\n"
        "    end: 2026-11-23T12:00:00Z\n    targets: [a]\n",
        f"{H}:7:12: maintenance[0].start: expected a date and time with a zone;"
        " write one such as 2026-11-23T10:00:00Z or 2026-11-23T11:00:00+01:00",
        id="maintenance-naive-time",
    ),
    pytest.param(
        _target() + "maintenance:\n  - name: w\n    start: 2026-11-23T12:00:00Z\n"
        "    end: 2026-11-23T10:00:00Z\n    targets: [a]\n",
        f"{H}:8:10: maintenance[0].end: 2026-11-23T10:00:00+00:00 is not after start"
        " 2026-11-23T12:00:00+00:00; set end later than start",
        id="maintenance-end-before-start",
    ),
    pytest.param(
        _target() + MAINTENANCE + "    targets: [a]\n    until: tomorrow\n",
        f"{H}:10:5: maintenance[0]: unknown key 'until'; remove it or use one of `name`,"
        " `start`, `end`, `targets`, `match_labels`",
        id="maintenance-unknown-key",
    ),
    pytest.param(
        "shard: {index: 2, total: 2}\n" + _target(),
        f"{H}:1:16: shard.index: 2 is out of range; use a whole number from 0 to 1",
        id="shard-index-out-of-range",
    ),
    pytest.param(
        "shard: {total: 3}\n" + _target(),
        f"{H}:1:8: shard: missing required key `index`;"
        " add `index:`, this instance's number from 0 to 2",
        id="shard-without-index",
    ),
    pytest.param(
        "shard: {index: 0}\n" + _target(),
        f"{H}:1:8: shard: missing required key `total`;"
        " add `total:`, the number of instances sharing the targets",
        id="shard-without-total",
    ),
    pytest.param(
        "shard: {index: 0, total: 0}\n" + _target(),
        f"{H}:1:26: shard.total: 0 is out of range; use a whole number from 1 to 1000",
        id="shard-total-zero",
    ),
    # --- tcp probes: tls and steps (docs/probes.md) ---
    pytest.param(
        _target(probes="{tcp: {port: 443, tls: true}}"),
        f"{H}:4:36: targets[0].probes.tcp.tls: expected a mapping of TLS settings, got a boolean"
        " (true); write one such as `tls: {server_name: www.example.com}`, or `tls: {}`",
        id="tls-not-mapping",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 443, tls: {verfy: false}}}"),
        f"{H}:4:37: targets[0].probes.tcp.tls: unknown key 'verfy'; did you mean `verify`?",
        id="unknown-tls-key",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 443, tls: {verify: 'no'}}}"),
        f"{H}:4:45: targets[0].probes.tcp.tls.verify: expected a boolean, got a string ('no');"
        " write true or false",
        id="tls-verify-not-boolean",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 443, tls: {server_name: bad_name}}}"),
        f"{H}:4:50: targets[0].probes.tcp.tls.server_name: 'bad_name' is not a valid host name:"
        f" '_' is not allowed; {DNS_RULE}",
        id="tls-server-name",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 443, tls: {ca_file: ca.pem}}}"),
        f"{H}:4:46: targets[0].probes.tcp.tls.ca_file: 'ca.pem' is not an absolute path;"
        " write the full path, such as /etc/hostwatch/ca.pem",
        id="tls-relative-file",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 443, tls: {ca_file: /nonexistent/ca.pem}}}"),
        f"{H}:4:46: targets[0].probes.tcp.tls.ca_file: cannot read '/nonexistent/ca.pem':"
        " No such file or directory; check the path and that hostwatch may read it",
        id="tls-missing-file",
    ),
    pytest.param(
        _target(probes=f"{{tcp: {{port: 443, tls: {{verify: false, ca_file: {FULL_EXAMPLE}}}}}}}"),
        f"{H}:4:61: targets[0].probes.tcp.tls.ca_file: ca_file is not used with `verify: false`;"
        " remove it, or set `verify: true`",
        id="tls-ca-file-without-verify",
    ),
    pytest.param(
        _target(probes=f"{{tcp: {{port: 443, tls: {{key_file: {FULL_EXAMPLE}}}}}}}"),
        f"{H}:4:47: targets[0].probes.tcp.tls.key_file: key_file needs cert_file; add the client"
        " certificate as `cert_file:`",
        id="tls-key-without-cert",
    ),
    pytest.param(
        _target(probes=f"{{tcp: {{port: 443, tls: {{ca_file: {FULL_EXAMPLE}}}}}}}"),
        f"{H}:4:36: targets[0].probes.tcp.tls: cannot use these TLS files: no certificate or crl"
        " found; give PEM files: CA certificates, and a client certificate with its unencrypted"
        " key",
        id="tls-file-not-pem",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: {send: x}}}"),
        f"{H}:4:36: targets[0].probes.tcp.steps: expected a list of steps, got a mapping;"
        " write `- send: ...` and `- expect: ...` items",
        id="steps-not-list",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: []}}"),
        f"{H}:4:36: targets[0].probes.tcp.steps: no steps; give 1 to 16 steps,"
        " write `- send: ...` and `- expect: ...` items",
        id="steps-empty",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [" + ", ".join(["{send: x}"] * 17) + "]}}"),
        f"{H}:4:36: targets[0].probes.tcp.steps: 17 steps are too many; give 1 to 16 steps,"
        " write `- send: ...` and `- expect: ...` items",
        id="steps-too-many",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{timeout: 1s}]}}"),
        f"{H}:4:37: targets[0].probes.tcp.steps[0]: missing `send` or `expect`; add the bytes to"
        " send as `send:` or a regular expression to wait for as `expect:`",
        id="step-neither-send-nor-expect",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: x, expect: y}]}}"),
        f"{H}:4:37: targets[0].probes.tcp.steps[0]: a step either sends or expects, not both;"
        " make it two steps",
        id="step-send-and-expect",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: x, wait: 1s}]}}"),
        f"{H}:4:47: targets[0].probes.tcp.steps[0]: unknown key 'wait'; remove it or use one of"
        " `send`, `expect`, `timeout`",
        id="unknown-step-key",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: x, timeout: 1s}]}}"),
        f"{H}:4:47: targets[0].probes.tcp.steps[0]: `timeout` belongs to `expect` steps; remove"
        " it, a send does not wait",
        id="step-send-with-timeout",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: 'a\\q'}]}}"),
        f"{H}:4:44: targets[0].probes.tcp.steps[0].send: unknown escape `\\q`; use \\r, \\n,"
        " \\t, \\0, \\\\ or \\xNN",
        id="step-send-unknown-escape",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: ''}]}}"),
        f"{H}:4:44: targets[0].probes.tcp.steps[0].send: nothing to send; write at least one byte",
        id="step-send-empty",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: " + "x" * 1401 + "}]}}"),
        f"{H}:4:44: targets[0].probes.tcp.steps[0].send: 1401 bytes are too many; send at most"
        " 1400 bytes",
        id="step-send-too-long",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{send: 12}]}}"),
        f'{H}:4:44: targets[0].probes.tcp.steps[0].send: expected a string, got an integer (12);'
        ' quote it: "12"',
        id="step-send-not-string",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{expect: '(unclosed'}]}}"),
        f"{H}:4:46: targets[0].probes.tcp.steps[0].expect: '(unclosed' is not a valid regular"
        " expression: missing ), unterminated subpattern at position 0; fix it (Python `re`"
        " syntax)",
        id="step-expect-invalid-regex",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{expect: 'x*'}]}}"),
        f"{H}:4:46: targets[0].probes.tcp.steps[0].expect: 'x*' matches no data at all, so the"
        " step would pass at once; make it match at least one character",
        id="step-expect-matches-nothing",
    ),
    pytest.param(
        _target(probes="{tcp: {port: 1, steps: [{expect: x, timeout: 5ms}]}}"),
        f"{H}:4:58: targets[0].probes.tcp.steps[0].timeout: 5ms is shorter than the minimum"
        " 10ms; set timeout to at least 10ms",
        id="step-expect-timeout-below",
    ),
    # --- udp probes ---
    pytest.param(
        _target(probes="{udp: {payload: x}}"),
        f"{H}:4:19: targets[0].probes.udp: missing required key `port`; add the UDP port to send"
        " to, such as `port: 7`",
        id="udp-port-missing",
    ),
    pytest.param(
        _target(probes="{udp: {port: 7}}"),
        f"{H}:4:19: targets[0].probes.udp: missing required key `payload`; add the bytes to"
        " send, such as `payload: 'ping\\n'`",
        id="udp-payload-missing",
    ),
    pytest.param(
        _target(probes="{udp: {port: 7, payload: " + "x" * 1401 + "}}"),
        f"{H}:4:38: targets[0].probes.udp.payload: 1401 bytes are too many; send at most 1400"
        " bytes",
        id="udp-payload-too-long",
    ),
    pytest.param(
        _target(probes="{udp: {port: 7, payload: x, expct: y}}"),
        f"{H}:4:41: targets[0].probes.udp: unknown key 'expct'; did you mean `expect`?",
        id="unknown-udp-key",
    ),
    pytest.param(
        _target(probes="{udp: {port: 7, payload: x, expect: '[a-'}}"),
        f"{H}:4:49: targets[0].probes.udp.expect: '[a-' is not a valid regular expression:"
        " unterminated character set at position 0; fix it (Python `re` syntax)",
        id="udp-expect-invalid-regex",
    ),
    # --- dns probes ---
    pytest.param(
        _target(probes="{dns: 53}"),
        f"{H}:4:19: targets[0].probes.dns: expected a mapping, got an integer (53); write one"
        " such as `dns: {query: {name: example.com, type: A}}`",
        id="dns-not-mapping",
    ),
    pytest.param(
        _target(probes="{dns: {port: 53}}"),
        f"{H}:4:19: targets[0].probes.dns: missing required key `query`; add the question, such"
        " as `query: {name: example.com, type: A}`",
        id="dns-query-missing",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab}, rcode: NOERROR}}"),
        f"{H}:4:42: targets[0].probes.dns: unknown key 'rcode'; remove it or use one of `port`,"
        " `query`, `expect_rcode`, `answer_contains`, `answer_matches`",
        id="unknown-dns-key",
    ),
    pytest.param(
        _target(probes="{dns: {port: 0, query: {name: x.lab}}}"),
        f"{H}:4:26: targets[0].probes.dns.port: 0 is out of range; use a whole number from 1 to"
        " 65535",
        id="dns-port-zero",
    ),
    pytest.param(
        _target(probes="{dns: {query: example.com}}"),
        f"{H}:4:27: targets[0].probes.dns.query: expected a mapping with `name` and `type`, got a"
        " string ('example.com'); write one such as `query: {name: example.com, type: A}`",
        id="dns-query-not-mapping",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab, class: IN}}}"),
        f"{H}:4:41: targets[0].probes.dns.query: unknown key 'class'; remove it or use one of"
        " `name`, `type`, `recursion_desired`",
        id="unknown-dns-query-key",
    ),
    pytest.param(
        _target(probes="{dns: {query: {type: A}}}"),
        f"{H}:4:27: targets[0].probes.dns.query: missing required key `name`; add the name to"
        " ask for, such as `name: example.com`",
        id="dns-name-missing",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: a..b}}}"),
        f"{H}:4:34: targets[0].probes.dns.query.name: 'a..b' is not a valid DNS name (a DNS"
        " label is empty); write one such as www.example.com",
        id="dns-name-invalid",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: ''}}}"),
        f"{H}:4:34: targets[0].probes.dns.query.name: the name is empty; write one such as"
        " example.com, or `.` for the root",
        id="dns-name-empty",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: 'a b'}}}"),
        f"{H}:4:34: targets[0].probes.dns.query.name: 'a b' contains a space or control"
        " character; remove it",
        id="dns-name-space",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab, type: AAA}}}"),
        f"{H}:4:47: targets[0].probes.dns.query.type: 'AAA' is not a DNS record type; did you"
        " mean `AAAA`?",
        id="dns-type-unknown",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab, type: AXFR}}}"),
        f"{H}:4:47: targets[0].probes.dns.query.type: 'AXFR' cannot be asked in one UDP query;"
        " use a record type such as `A`, `AAAA`, `CNAME`, `MX`, `NS`, `PTR`, `SOA`, `SRV`, `TXT`,"
        " `CAA`",
        id="dns-type-meta",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab, recursion_desired: 1}}}"),
        f"{H}:4:60: targets[0].probes.dns.query.recursion_desired: expected a boolean, got an"
        " integer (1); write true or false",
        id="dns-recursion-not-boolean",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab}, expect_rcode: NOERR}}"),
        f"{H}:4:56: targets[0].probes.dns.expect_rcode: 'NOERR' is not a DNS rcode; use one such"
        " as NOERROR, NXDOMAIN, SERVFAIL or REFUSED",
        id="dns-rcode-unknown",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab}, expect_rcode: []}}"),
        f"{H}:4:56: targets[0].probes.dns.expect_rcode: no rcodes; list 1 to 8, such as"
        " [NOERROR, NXDOMAIN]",
        id="dns-rcodes-empty",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab}, answer_contains: 5}}"),
        f'{H}:4:59: targets[0].probes.dns.answer_contains: expected a string, got an integer (5);'
        ' quote it: "5"',
        id="dns-answer-contains-not-string",
    ),
    pytest.param(
        _target(probes="{dns: {query: {name: x.lab}, answer_matches: '*'}}"),
        f"{H}:4:58: targets[0].probes.dns.answer_matches: '*' is not a valid regular expression:"
        " nothing to repeat at position 0; fix it (Python `re` syntax)",
        id="dns-answer-matches-invalid-regex",
    ),
]


class TestBadConfigs:
    @pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
    def test_exact_message(self, text: str, expected: str) -> None:
        """Each rule is enforced with one exact, located message that says what to do."""
        assert expected == _problems(text)

    def test_table_covers_enough_rules(self) -> None:
        """The table holds at least one case per rule of the schema (35 or more)."""
        assert len(BAD_CONFIGS) >= 35

    @pytest.mark.parametrize(
        "text",
        [
            _target(name="n" * 10000),
            _target(host="h" * 10000),
            _target(f"labels: {{{'k' * 10000}: v}}"),
        ],
        ids=["name", "host", "label-name"],
    )
    def test_huge_values_make_short_messages(self, text: str) -> None:
        """A 10,000-character value is cut in the message: no line grows past ~250 characters."""
        assert all(len(line) < 250 for line in _problems(text).splitlines())

    def test_no_control_characters_in_messages(self) -> None:
        """Control characters from the file reach messages only `repr()`-escaped."""
        text = _target('labels: {x: "\\x1b"}', name='"a\\e[31mred"', host='"b\\rc"')
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", _problems(text))


class TestProblems:
    def test_all_problems_collected_and_sorted(self) -> None:
        """Every problem of a file is in one ConfigError, sorted by line and column."""
        text = (
            "targets:\n"
            "  - name: b\n"
            "    host: 999.1.1.1\n"
            "    probes: {tcp: {port: 0}}\n"
            "    window: 0\n"
            "icmp: {mode: fast}\n"
        )
        with pytest.raises(ConfigError) as caught:
            parse_config(text, SOURCE)
        where = [(p.location.line, p.location.column) for p in caught.value.problems if p.location]
        assert where == [(3, 11), (4, 26), (5, 13), (6, 14)]

    def test_problem_fields(self) -> None:
        """A problem keeps its location, the dotted path and the message apart."""
        with pytest.raises(ConfigError) as caught:
            parse_config(_target("timeout: 2s"), SOURCE)
        (problem,) = caught.value.problems
        assert SourceLocation(SOURCE, 5, 14) == problem.location
        assert problem.path == "targets[0].timeout"
        assert problem.message.startswith("2s is longer than the interval 1s")

    def test_str_without_location(self) -> None:
        """A problem without a location names the file instead."""
        assert str(Problem(None, "x", "broken", "f.yml")) == "f.yml: x: broken"

    def test_config_error_pickles(self) -> None:
        """ConfigError survives pickling (it may cross a process boundary) with its problems."""
        error = ConfigError([Problem(SourceLocation("f", 1, 2), "p", "m")])
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
        assert (error.problems, str(error)) == (copy.problems, str(copy))

    def test_odd_keys_are_shown_safely_in_paths(self) -> None:
        """A key that is not an identifier appears in the path `repr()`-escaped in brackets."""
        text = _target('labels: {"ra ck": *x}')
        assert "targets[0].labels['ra ck']: YAML aliases (`*x`)" in _problems(text)


class TestValidConfig:
    def test_full_example_round_trips(self) -> None:
        """The complete example file builds exactly the expected Config."""
        site_lab = (("site", "lab"),)
        state = {"degraded_loss_ratio": 0.05, "degraded_rtt": 0.05, "flap_window": 900.0,
                 "flap_start": 8, "flap_stop": 3, "rtt_histogram": True}
        expected = Config(
            targets=(
                TargetConfig(
                    "loopback-v4", "127.0.0.1", (ICMP,), interval=2.0, timeout=0.5,
                    failure_threshold=5, success_threshold=2, window=300, labels=site_lab,
                    **state,  # type: ignore[arg-type]
                ),
                TargetConfig(
                    "second-loopback", "127.0.0.2", (ICMP, ProbeSpec(ProbeKind.TCP, 22)),
                    interval=10.0, timeout=2.0, failure_threshold=5, success_threshold=2,
                    window=300, labels=(("role", "ssh"), ("site", "bench")),
                    **state,  # type: ignore[arg-type]
                ),
                TargetConfig(
                    "loopback-v6", "::1", (ProbeSpec(ProbeKind.TCP, 10115),), interval=2.0,
                    timeout=0.5, failure_threshold=5, success_threshold=2, window=300,
                    ip_protocol=IpProtocol.IP6, labels=site_lab,
                    **state,  # type: ignore[arg-type]
                ),
                TargetConfig(
                    "localhost", "localhost", (ICMP,), interval=2.0, timeout=0.5,
                    failure_threshold=3, success_threshold=2, window=300,
                    ip_protocol=IpProtocol.DUAL, labels=site_lab,
                    **state,  # type: ignore[arg-type]
                ),
            ),
            icmp=IcmpSettings(IcmpMode.AUTO, 56),
            dns_refresh=600.0,
            dns_servers=("127.0.0.53",),
            maintenance=(MaintenanceWindow("ssh-upgrade", 1796162400.0, 1796167800.0,
                                           ("loopback-v6",), (("role", "ssh"),)),),
            histogram_buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            source=str(FULL_EXAMPLE),
        )
        assert expected == load_config(FULL_EXAMPLE)

    def test_target_source_location(self) -> None:
        """Each target remembers the position of its list item."""
        config = load_config(FULL_EXAMPLE)
        where = [(t.source.line, t.source.column) for t in config.targets if t.source]
        assert where == [(29, 5), (34, 5), (45, 5), (52, 5)]

    def test_defaults_applied(self) -> None:
        """Keys left out anywhere take the values of `model.DEFAULTS`."""
        config = parse_config(_target(), SOURCE)
        expected = Config(
            targets=(TargetConfig("a", "127.0.0.1", (ICMP,)),),
            icmp=IcmpSettings(DEFAULTS.icmp_mode, DEFAULTS.icmp_payload_size),
            dns_refresh=DEFAULTS.dns_refresh,
            histogram_buckets=DEFAULTS.histogram_buckets,
            source=SOURCE,
        )
        assert expected == config

    def test_defaults_section_applies_to_targets(self) -> None:
        """`defaults` fills every key a target leaves out; the target's own value wins."""
        text = "defaults:\n  interval: 5s\n  window: 7\n" + _target("window: 9")
        target = _only_target(text)
        assert (5.0, DEFAULTS.timeout, 9) == (target.interval, target.timeout, target.window)

    def test_rtt_histogram_off_unless_asked(self) -> None:
        """`rtt_histogram` is off by default, on from `defaults`, and a target's own wins."""
        assert not _only_target(_target()).rtt_histogram
        on = "defaults:\n  rtt_histogram: true\n"
        assert _only_target(on + _target()).rtt_histogram
        assert not _only_target(on + _target("rtt_histogram: false")).rtt_histogram

    def test_rtt_histogram_must_be_a_boolean(self) -> None:
        """A non-boolean is reported at its line and column, with what to write."""
        problems = _problems(_target("rtt_histogram: 'yes'"))
        assert "hostwatch.yml:5:20: targets[0].rtt_histogram" in problems
        assert "write true or false" in problems

    def test_label_merge(self) -> None:
        """Default labels are merged under the target's; the target wins; pairs are sorted."""
        text = "defaults:\n  labels: {zone: z1, role: any}\n" + _target("labels: {role: db}")
        assert _only_target(text).labels == (("role", "db"), ("zone", "z1"))

    def test_probes_sorted_icmp_then_tcp(self) -> None:
        """Probes come out in a fixed order whatever the order in the file."""
        target = _only_target(_target(probes="{tcp: {port: 22}, icmp: }"))
        assert (ICMP, ProbeSpec(ProbeKind.TCP, 22)) == target.probes

    @pytest.mark.parametrize(
        ("written", "expected"),
        [
            ('"::0001"', "::1"),
            ('"0:0:0:0:0:0:0:1"', "::1"),
            ('"::FFFF:127.0.0.1"', "::ffff:7f00:1"),
            ("127.0.0.2", "127.0.0.2"),
            ("LocalHost", "localhost"),
            ("localhost.", "localhost."),
            ("a-1.b2.localdomain", "a-1.b2.localdomain"),
        ],
    )
    def test_host_normalised(self, written: str, expected: str) -> None:
        """IP literals are written canonically; DNS names are kept but lowercased."""
        assert expected == _only_target(_target(host=written)).host

    @pytest.mark.parametrize(
        ("written", "expected"),
        [("2", 2.0), ("0.25", 0.25), ("1m", 60.0), ("250ms", 0.25), ("1h", 3600.0)],
    )
    def test_intervals(self, written: str, expected: float) -> None:
        """Intervals are numbers of seconds or Prometheus durations."""
        assert expected == _only_target(_target(f"interval: {written}", "timeout: 10ms")).interval

    def test_null_sections_are_empty(self) -> None:
        """A section written with nothing under it (`defaults:`) is an empty section."""
        text = "defaults:\nicmp:\n" + _target("labels:")
        assert parse_config(text, SOURCE).targets[0].labels == ()

    def test_empty_target_list(self) -> None:
        """`targets: []` is a valid configuration that watches nothing."""
        assert parse_config("targets: []\n", SOURCE).targets == ()

    def test_source_recorded(self) -> None:
        """`Config.source` is the name the text was given."""
        assert parse_config("targets: []\n", "x.yml").source == "x.yml"

    def test_utf8_bom_accepted(self) -> None:
        """A byte-order mark at the start, as some editors write, is accepted."""
        assert parse_config("\ufefftargets: []\n", SOURCE).targets == ()


class TestLoadConfig:
    def test_reads_file(self, tmp_path: Path) -> None:
        """A file is read, parsed and named by its path."""
        path = tmp_path / "hostwatch.yml"
        path.write_text(_target(), encoding="utf-8")
        assert str(path) == load_config(path).source

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file names the path and says how to point at the right one."""
        path = tmp_path / "nope.yml"
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert (
            f"{path}: cannot read: no such file; create it or pass the right path with"
            " --config.file" == str(caught.value)
        )

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is refused with a message saying to pass the file itself."""
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path)
        assert (
            f"{tmp_path}: cannot read: it is a directory; pass the path of the YAML file itself"
            == str(caught.value)
        )

    def test_unreadable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A file without read permission says how to fix the permissions."""

        def denied(*_args: object, **_kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(hostwatch.config, "open", denied, raising=False)
        path = tmp_path / "hostwatch.yml"
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert (
            f"{path}: cannot read: permission denied; make it readable by the user hostwatch"
            " runs as" == str(caught.value)
        )

    def test_invalid_utf8(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 are located by line and column."""
        path = tmp_path / "hostwatch.yml"
        path.write_bytes(b"targets:\n  - name: caf\xe9\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert (
            f"{path}:2:14: the file is not valid UTF-8 (byte 0xe9); save it as UTF-8"
            == str(caught.value)
        )

    def test_too_large(self, tmp_path: Path) -> None:
        """A file over 16 MiB is refused without being parsed."""
        path = tmp_path / "hostwatch.yml"
        path.write_bytes(b"#" * (16 * 1024 * 1024 + 1))
        with pytest.raises(ConfigError, match="larger than 16 MiB"):
            load_config(path)


class TestDefaultConfig:
    @pytest.mark.parametrize(
        ("listen_host", "probed"),
        [
            ("", "127.0.0.1"),
            ("127.0.0.1", "127.0.0.1"),
            ("0.0.0.0", "127.0.0.1"),  # noqa: S104 - a listen address, not a bind here
            ("::", "::1"),
            ("[::]", "::1"),
            ("::1", "::1"),
            ("localhost", "127.0.0.1"),
            ("192.0.2.2", "127.0.0.1"),  # never a non-loopback address
            ("2001:db8::2", "::1"),
            ("127.0.0.2", "127.0.0.2"),  # a loopback listen address is probed as it is
            ("127.9.0.1", "127.9.0.1"),
        ],
    )
    def test_metrics_target_is_loopback(self, listen_host: str, probed: str) -> None:
        """The metrics probe goes to a loopback address matching the listen address family."""
        config = default_config(listen_host, 10115)
        expected = TargetConfig("hostwatch-metrics", probed, (ProbeSpec(ProbeKind.TCP, 10115),),
                                rtt_histogram=True)
        assert expected == config.targets[2]

    def test_targets(self) -> None:
        """The embedded default watches both loopback addresses and the metrics port, with
        RTT histograms (a few targets: their cost does not matter)."""
        config = default_config("", 10115)
        expected = (
            TargetConfig("loopback-v4", "127.0.0.1", (ICMP,), rtt_histogram=True),
            TargetConfig("loopback-v6", "::1", (ICMP,), rtt_histogram=True),
            TargetConfig("hostwatch-metrics", "127.0.0.1", (ProbeSpec(ProbeKind.TCP, 10115),),
                         rtt_histogram=True),
        )
        assert (expected, "<embedded default>") == (config.targets, config.source)

    def test_port_is_used(self) -> None:
        """The metrics probe uses the port the daemon listens on."""
        assert ProbeSpec(ProbeKind.TCP, 9) == default_config("", 9).targets[2].probes[0]

    @pytest.mark.parametrize("port", [0, 65536, -1, True])
    def test_bad_port(self, port: int) -> None:
        """A port that cannot be probed (0: not bound yet) is a ValueError."""
        with pytest.raises(ValueError, match="listen_port must be the bound port"):
            default_config("", port)

    def test_template_is_yaml(self) -> None:
        """The embedded text is a template with exactly two placeholders."""
        names = {m[1] or m[2] for m in string.Template.pattern.findall(DEFAULT_CONFIG_YAML)}
        assert {"metrics_host", "metrics_port"} == names


class TestParseDuration:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("1h30m", 5400.0), ("500ms", 0.5), ("2s", 2.0), ("1d", 86400.0), ("1w", 604800.0),
            ("1y", 31536000.0), ("1m1ms", 60.001), ("0", 0.0), ("0s", 0.0), (5, 5.0),
            (0.25, 0.25), ("90s", 90.0),
        ],
    )
    def test_valid(self, value: object, seconds: float) -> None:
        """Numbers are seconds; strings are Prometheus durations."""
        assert seconds == parse_duration(value)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("", "the duration is empty; write one such as 2s, 500ms or 1m30s"),
            ("5", "'5' has no unit; write 5s for seconds, or 5 without quotes"),
            ("1.5s", f"'1.5s' is not a valid duration; {DURATION_FORMAT}"),
            ("1s1m", f"'1s1m' is not a valid duration; {DURATION_FORMAT}"),
            ("1s1s", f"'1s1s' is not a valid duration; {DURATION_FORMAT}"),
            ("-1s", f"'-1s' is not a valid duration; {DURATION_FORMAT}"),
            ("1S", f"'1S' is not a valid duration; {DURATION_FORMAT}"),
            ("\u0661s", f"'\u0661s' is not a valid duration; {DURATION_FORMAT}"),
            ("9" * 100 + "s", f"'{'9' * 56}... is not a valid duration; {DURATION_FORMAT}"),
            (-1, "-1 is negative; durations must be 0 or more seconds"),
            (float("nan"), "nan is not a finite number of seconds; write one such as 2"),
            (float("inf"), "inf is not a finite number of seconds; write one such as 2"),
            (10**400, "the number of seconds is too large; write a duration such as 1h"),
            (True, "expected a duration such as 2s or 500ms, or a number of seconds,"
                   " got a boolean (True)"),
            (None, "expected a duration such as 2s or 500ms, or a number of seconds,"
                   " got NoneType (None)"),
        ],
        ids=lambda v: repr(v)[:20],
    )
    def test_invalid(self, value: object, message: str) -> None:
        """Anything else is a ValueError that says how to write a duration."""
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_duration(value)

    @given(st.integers(min_value=0, max_value=10**12))
    def test_format_round_trips(self, millis: int) -> None:
        """format_duration writes what parse_duration reads back exactly."""
        seconds = millis / 1000
        assert seconds == parse_duration(format_duration(seconds))


class TestFormatDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(5400.0, "1h30m"), (0.5, "500ms"), (1.0, "1s"), (60.001, "1m1ms"), (0.0, "0s"),
         (0.0001, "0.0001s"), (86400.0 * 8, "1w1d")],
    )
    def test_format(self, seconds: float, text: str) -> None:
        """Seconds are written the Prometheus way, or as plain seconds below 1 ms."""
        assert text == format_duration(seconds)


class TestDocs:
    def test_full_example_is_in_docs(self) -> None:
        """The complete example in the documentation is the tested example file."""
        assert FULL_EXAMPLE.read_text(encoding="utf-8") in DOCS.read_text(encoding="utf-8")

    def test_embedded_default_is_in_docs(self) -> None:
        """The documentation shows the embedded default as it is."""
        assert DEFAULT_CONFIG_YAML in DOCS.read_text(encoding="utf-8")

    @pytest.mark.parametrize(
        "name", ["timeout-error.yml", "several-errors.yml"]
    )
    def test_error_examples_are_real(self, name: str) -> None:
        """The error examples in the documentation are what the loader prints."""
        with pytest.raises(ConfigError) as caught:
            load_config(HERE / "configs" / name)
        printed = str(caught.value).replace(str(HERE / "configs" / name), "hostwatch.yml")
        assert printed in DOCS.read_text(encoding="utf-8")


def _yaml_values() -> st.SearchStrategy[object]:
    """YAML-able values whose keys come mostly from the schema, to reach deep checks."""
    words = st.sampled_from(
        ["targets", "defaults", "name", "host", "probes", "icmp", "tcp", "port", "interval",
         "timeout", "labels", "window", "mode", "histogram_buckets", "ip_protocol", "x"]
    )
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
        st.sampled_from(["1s", "500ms", "127.0.0.1", "::1", "localhost", "auto", "ip6", "raw"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(words, inner, max_size=5)
        ),
        max_leaves=25,
    )


def _outcome(text: str) -> str:
    """`ok` if `text` parses, `problems` if it raises a ConfigError that lists some."""
    try:
        parse_config(text, SOURCE)
    except ConfigError as err:
        return "problems" if err.problems else "ConfigError without problems"
    return "ok"


class TestFuzz:
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text())
    def test_arbitrary_text(self, text: str) -> None:
        """Any text either parses or raises ConfigError with problems, never anything else."""
        assert _outcome(text) in {"ok", "problems"}

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(_yaml_values())
    def test_arbitrary_documents(self, value: object) -> None:
        """Any YAML document either parses or raises ConfigError, never anything else."""
        assert _outcome(yaml.safe_dump({"targets": [value]})) in {"ok", "problems"}
