"""YAML configuration → `hostwatch.model.Config`: strict, and every problem has a location.

The text is *composed* (not loaded) with PyYAML's SafeLoader, so every value keeps its line and
column; anchors, aliases, merge keys, custom tags, duplicate keys and non-string keys are refused
on that node tree. The tree is then checked against the schema, collecting every problem, and one
`ConfigError` lists them all, sorted by position. Defaults come from `hostwatch.model.DEFAULTS`.

Strings from the file (names, hosts, labels) are validated here and are never given to a shell.
Messages show them with `repr()`, cut to 60 characters, so control characters and huge values
cannot garble a terminal or the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import difflib
import enum
import gc
import hashlib
import ipaddress
import math
import os
import pickle
import re
import signal
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias, TypeGuard, TypeVar

import yaml
import yaml.composer
import yaml.constructor
import yaml.reader
import yaml.resolver
from yaml.reader import ReaderError

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: the pure-Python parser alone
    _LIBYAML = False
else:
    _LIBYAML = True

from hostwatch.heap import reuse_freed_memory
from hostwatch.model import (
    DEFAULTS,
    Config,
    DnsOptions,
    IcmpMode,
    IcmpSettings,
    IpProtocol,
    MaintenanceWindow,
    ProbeKind,
    ProbeSpec,
    Shard,
    SourceLocation,
    Step,
    TargetConfig,
    TargetFiles,
    TlsOptions,
    UdpOptions,
)
from hostwatch.probes.tcp_steps import MAX_SEND, decode_escapes
from hostwatch.probes.tls import check_files, classify_tls_error

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "ConfigError",
    "Problem",
    "default_config",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)

_EMBEDDED_SOURCE: Final = "<embedded default>"

# The embedded default, parsed by the same parser. `${metrics_host}` is always a loopback address
# and `${metrics_port}` the daemon's own metrics port (see `default_config`).
DEFAULT_CONFIG_YAML: Final = """\
# hostwatch embedded default: watch this machine's loopback and hostwatch's own metrics port.
defaults:
  rtt_histogram: true
targets:
  - name: loopback-v4
    host: 127.0.0.1
    probes:
      icmp: {}
  - name: loopback-v6
    host: "::1"
    probes:
      icmp: {}
  - name: hostwatch-metrics
    host: "${metrics_host}"
    probes:
      tcp: {port: ${metrics_port}}
"""

_MAX_FILE_BYTES: Final = 16 * 1024 * 1024
_PARSE_IN_CHILD_CHARS: Final = 256 * 1024  # ~4,000 targets; smaller files are parsed in place
_MAX_DEPTH: Final = 64  # our schema nests 5 levels; deeper YAML is a mistake or an attack
_SHOW_MAX: Final = 60
_NAME_MAX: Final = 128
_DNS_NAME_MAX: Final = 253
_DNS_LABEL_MAX: Final = 63
_LABEL_VALUE_MAX: Final = 1024
_BUCKETS_MAX: Final = 40
_DURATION_TEXT_MAX: Final = 64

_YAML_TAG: Final = "tag:yaml.org,2002:"
_STR_TAG: Final = _YAML_TAG + "str"
_SCALAR_TAGS: Final = frozenset(
    _YAML_TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp")
)
_ALIAS_TAG: Final = "!hostwatch/alias"  # stands in for a refused alias in the node tree

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")
_NAME_CHARS: Final = frozenset(string.ascii_letters + string.digits + "._:@/+-")
_DNS_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_DNS_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-")
_LABEL_NAME_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_PLAIN_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_RESERVED_LABELS: Final = frozenset(
    ("target", "ip", "probe", "state", "reason", "le", "quantile", "stat", "instance", "job",
     "ip_protocol", "window", "phase", "version", "subject", "issuer", "serial_number",
     "fingerprint_sha256")
)

_DURATION_RE: Final = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?"
    r"(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
_DAY_MS: Final = 86_400_000
_DURATION_UNITS: Final = (
    ("y", 365 * _DAY_MS), ("w", 7 * _DAY_MS), ("d", _DAY_MS), ("h", 3_600_000),
    ("m", 60_000), ("s", 1_000), ("ms", 1),
)

_TOP_KEYS: Final = (
    "defaults", "icmp", "dns_refresh", "dns_servers", "histogram_buckets", "maintenance",
    "shard", "target_files", "targets",
)
_SETTING_KEYS: Final = (
    "interval", "timeout", "failure_threshold", "success_threshold", "window", "ip_protocol",
    "labels", "degraded_loss_ratio", "degraded_rtt", "flap_window", "flap_start", "flap_stop",
    "rtt_histogram",
)
_TARGET_FILES_KEYS: Final = ("files", "probes", "refresh", *_SETTING_KEYS)
_MAINTENANCE_KEYS: Final = ("name", "start", "end", "targets", "match_labels")
_TARGET_KEYS: Final = ("name", "host", "probes", *_SETTING_KEYS)
_ICMP_KEYS: Final = ("mode", "payload_size")
_PROBE_KEYS: Final = tuple(kind.value for kind in ProbeKind)
_SEE_DOCS: Final = "see docs/configuration.md for its keys"


@dataclass(frozen=True, slots=True)
class _Range:
    """Inclusive bounds of a number (seconds for durations)."""

    low: float
    high: float


_INTERVAL: Final = _Range(0.1, 3600.0)
_TIMEOUT: Final = _Range(0.01, 60.0)
_DNS_REFRESH: Final = _Range(1.0, 86400.0)
_THRESHOLD: Final = _Range(1, 1000)
_WINDOW: Final = _Range(1, 10000)
_PAYLOAD: Final = _Range(16, 1472)
_PORT: Final = _Range(1, 65535)
_RATIO: Final = _Range(0.001, 1.0)
_DEGRADED_RTT: Final = _Range(0.0001, 60.0)
_FLAP_WINDOW: Final = _Range(10.0, 86400.0)
_FLAP_START: Final = _Range(2, 1000)
_FLAP_STOP: Final = _Range(0, 999)
_DNS_SERVERS_MAX: Final = 8


# --- public types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration: where, which key, and what to do about it.

    `file` names the configuration when there is no `location` (a file that cannot be read).
    """

    location: SourceLocation | None
    path: str  # e.g. `targets[1].timeout`; empty for the whole file
    message: str
    file: str = ""

    def __str__(self) -> str:
        where = str(self.location) if self.location is not None else self.file
        return ": ".join(part for part in (where, self.path, self.message) if part)


class ConfigError(Exception):
    """A configuration that cannot be used; `str()` is one line per problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[Problem, ...]]]:
        return (type(self), (self.problems,))


# --- public functions -----------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], previous: Config | None = None) -> Config:
    """Read and validate the YAML file at `path`; raise `ConfigError` naming every problem.
    Targets equal to one of `previous` (the running config), at the same place in the file,
    come back as that very object."""
    text, source, child = _begin(path, previous)
    if child is None:
        return parse_config(text, source, previous)
    with os.fdopen(child.fd, "rb") as pipe:
        data = pipe.read()
    return child.result(data)


async def load_config_async(path: str | os.PathLike[str],
                            previous: Config | None = None) -> Config:
    """`load_config` for the event loop: a large file is parsed in a forked child while the
    loop goes on (probes keep their schedule during a reload); only the unpickling of the
    result runs in the loop, and only of the targets not in `previous`."""
    text, source, child = _begin(path, previous)
    if child is None:
        return parse_config(text, source, previous)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(child.fd, "rb", 0))
    try:
        data = await reader.read()
    finally:
        transport.close()
    return child.result(data)


def _begin(path: str | os.PathLike[str],
           previous: Config | None) -> tuple[str, str, _ParseChild | None]:
    """The file's text and name, and the child parsing it if it is large enough for one."""
    source = os.fspath(path)
    text = _decode(source, _read_file(source))
    large = len(text) >= _PARSE_IN_CHILD_CHARS and hasattr(os, "fork")
    return text, source, _ParseChild.start(text, source, previous) if large else None


def _pickle_keeping(result: Config | ConfigError, previous: Config | None) -> bytes:
    """`result` pickled with each target that equals one of `previous` (the running config)
    at the same place written as its index: the parent keeps its own object for it (no
    unpickling, no second copy in memory)."""
    if not isinstance(result, Config) or previous is None or not previous.targets:
        return pickle.dumps((result, None), protocol=pickle.HIGHEST_PROTOCOL)
    at = {t.source: i for i, t in enumerate(previous.targets)}
    targets: list[TargetConfig | int] = []
    for t in result.targets:
        i = at.get(t.source)
        # The one parse_config kept, or one read again (the text around it changed) but equal.
        kept = i is not None and (previous.targets[i] is t or previous.targets[i] == t)
        targets.append(i if kept and i is not None else t)
    rest = dataclasses.replace(result, targets=())
    return pickle.dumps((rest, targets), protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle_keeping(data: bytes, previous: Config | None) -> Config | ConfigError:
    loaded: Config | ConfigError
    targets: list[TargetConfig | int] | None
    loaded, targets = pickle.loads(data)  # noqa: S301  # our own child's pickle
    if isinstance(loaded, ConfigError):
        return loaded
    if targets is None:  # no running config to keep objects from (the first load)
        _share_equal_values(loaded.targets, ())
        return loaded
    running = previous.targets if previous is not None else ()
    kept = tuple(running[t] if isinstance(t, int) else t for t in targets)
    _share_equal_values([t for t in targets if not isinstance(t, int)], running[:1])
    return dataclasses.replace(loaded, targets=kept)


# Fields most targets hold equal values of. Unpickling makes a float per target and field
# (pickle keeps no identity of floats) and a probes tuple per target (the parser made each).
_SHARED_FIELDS: Final = ("probes", "interval", "timeout", "labels", "degraded_loss_ratio",
                         "degraded_rtt", "flap_window")


def _share_equal_values(targets: Sequence[TargetConfig],
                        running: Sequence[TargetConfig]) -> None:
    """Let equal values of `_SHARED_FIELDS` be one object (~140 bytes a target; ~20 ms for
    10,000), the running config's where it has one. The targets are new, seen by no one
    else yet: setting a field of the frozen dataclass changes nothing but identity."""
    seen: dict[tuple[type, object], object] = {}
    for target in (*running, *targets):
        for name in _SHARED_FIELDS:
            value = getattr(target, name)
            try:
                shared = seen.setdefault((type(value), value), value)
            except TypeError:  # a probe spec holding something unhashable: left as it is
                continue
            if shared is not value:
                object.__setattr__(target, name, shared)


@dataclass(frozen=True, slots=True)
class _ParseChild:
    """`parse_config` in a forked child, the result pickled back through a pipe. Parsing
    10,000 targets makes ~60 MB of short-lived objects (the YAML and located trees); Python
    keeps most freed memory in the process, so the daemon would keep that peak for good. The
    child does instead; the parent only unpickles the Config, and of its targets only those
    that are not in the running config (`previous`). Same Config, same ConfigError; if the
    child fails for any other reason, the parse runs in the caller."""

    pid: int
    fd: int
    text: str
    source: str
    previous: Config | None

    @classmethod
    def start(cls, text: str, source: str, previous: Config | None) -> _ParseChild:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: parse, write, exit; never back into the caller's code
            code = 70
            try:
                os.close(read_fd)
                gc.disable()  # a collection would scan the daemon's objects too; it exits soon
                reuse_freed_memory()  # it lives for one parse (hostwatch.heap)
                signal.set_wakeup_fd(-1)  # signals are the parent's business
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                try:
                    result: Config | ConfigError = parse_config(text, source, previous)
                except ConfigError as err:
                    result = err
                with os.fdopen(write_fd, "wb") as out:
                    out.write(_pickle_keeping(result, previous))
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        return cls(pid, read_fd, text, source, previous)

    def result(self, data: bytes) -> Config:
        """The Config from the child's `data` (its pipe read to the end); reaps the child,
        which exits right after closing the pipe."""
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not data:
            return parse_config(self.text, self.source, self.previous)
        loaded = _unpickle_keeping(data, self.previous)
        if isinstance(loaded, ConfigError):
            raise loaded
        return loaded


def parse_config(text: str, source: str, previous: Config | None = None) -> Config:
    """Validate YAML `text`; `source` names it in messages and becomes `Config.source`.

    libyaml parses first; a text it rejects, one with problems, and one with a tab (where
    libyaml accepts more than PyYAML) are parsed again by PyYAML alone, so that what is
    accepted and every message and location are exactly PyYAML's. A target of `previous`
    (the running config) whose entry has the same text and defaults at the same place is
    not read again: the result holds that very object.
    """
    kept = {t.source: t for t in previous.targets if t.text_digest and t.source is not None
            } if previous is not None else {}
    if _LIBYAML and "\t" not in text:
        config = _parse_clean(text, source, kept)
        if config is not None:
            return config
    config, context = _parse(text, source, _compose, kept)
    if config is None or context.problems:
        raise ConfigError(sorted(context.problems, key=_position))
    return config


def _parse_clean(text: str, source: str,
                 kept: Mapping[SourceLocation, TargetConfig]) -> Config | None:
    """The Config of a text libyaml reads without any problem, else None: one pass over its
    events for the common file, libyaml's parser with PyYAML's composer for the rest."""
    try:
        try:
            config, context = _parse(text, source, _compose_plain, kept)
        except _NotPlainError:
            config, context = _parse(text, source, _compose_fast, kept)
    except yaml.YAMLError:
        return None
    return config if not context.problems else None


def _compose_fast(context: _Context, text: str) -> _Node | None:
    return _compose(context, text, _FAST_LOADER)


def _parse(text: str, source: str, compose: Callable[[_Context, str], _Node | None],
           kept: Mapping[SourceLocation, TargetConfig]) -> tuple[Config | None, _Context]:
    context = _Context(source, previous=kept, text=text)
    with _gc_paused():
        root = compose(context, text)
        config = _build_config(context, root)
    return config, context


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while a config is built: it creates ~100 objects per target and keeps
    them, so the collector would scan them again and again (half the time of 10,000 targets)
    for no garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def default_config(listen_host: str, listen_port: int) -> Config:
    """The embedded default for a daemon whose metrics listen on `listen_host:listen_port`.

    The metrics target always probes a loopback address: `listen_host` itself when it is one,
    else `::1` for an IPv6 literal and `127.0.0.1` otherwise. Call it with the bound port.
    """
    if isinstance(listen_port, bool) or not _PORT.low <= listen_port <= _PORT.high:
        raise ValueError(f"listen_port must be the bound port from 1 to 65535, got {listen_port!r}")
    text = string.Template(DEFAULT_CONFIG_YAML).substitute(
        metrics_host=_loopback_for(listen_host), metrics_port=listen_port
    )
    return parse_config(text, _EMBEDDED_SOURCE)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a Prometheus duration string (`1h30m`, `500ms`).

    Units are ms, s, m, h, d, w, y with whole amounts, largest first. Raises ValueError with a
    message that says how to write the value.
    """
    if isinstance(value, str):
        return _parse_duration_text(value)
    if _is_number(value):
        return _checked_seconds(value)
    kind = "a boolean" if isinstance(value, bool) else type(value).__name__
    raise ValueError(
        f"expected a duration such as 2s or 500ms, or a number of seconds, got {kind}"
        f" ({_show(value)})"
    )


def format_duration(seconds: float) -> str:
    """The Prometheus form of `seconds` (`90.0` → `1m30s`); `0.0001s` style below 1 ms steps."""
    if not math.isfinite(seconds) or seconds < 0 or seconds > 1e15:
        return f"{seconds:g}s"
    millis = round(seconds * 1000)
    if millis == 0 or not math.isclose(millis, seconds * 1000, rel_tol=1e-9):
        return f"{seconds:g}s"
    parts = []
    for unit, size in _DURATION_UNITS:
        amount, millis = divmod(millis, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


# --- reading the file -----------------------------------------------------------------------


def _read_file(source: str) -> bytes:
    """The file's bytes, or ConfigError saying why it cannot be read."""
    try:
        with open(source, "rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError([Problem(None, "", _os_error_message(err), source)]) from None
    if len(data) > _MAX_FILE_BYTES:
        message = "the file is larger than 16 MiB; check that the path names the configuration"
        raise ConfigError([Problem(None, "", message, source)])
    return data


def _os_error_message(err: OSError) -> str:
    """What went wrong opening the file, and what to do."""
    if isinstance(err, FileNotFoundError):
        return "cannot read: no such file; create it or pass the right path with --config.file"
    if isinstance(err, IsADirectoryError):
        return "cannot read: it is a directory; pass the path of the YAML file itself"
    if isinstance(err, PermissionError):
        return "cannot read: permission denied; make it readable by the user hostwatch runs as"
    return f"cannot read: {err.strerror or err}; check the path and the file"


def _decode(source: str, data: bytes) -> str:
    """`data` as UTF-8 text, or ConfigError pointing at the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        column = len(data[line_start : err.start].decode("utf-8", "replace")) + 1
        where = SourceLocation(source, data.count(b"\n", 0, err.start) + 1, column)
        message = f"the file is not valid UTF-8 (byte 0x{data[err.start]:02x}); save it as UTF-8"
        raise ConfigError([Problem(where, "", message, source)]) from None


# --- messages -------------------------------------------------------------------------------


def _clip(text: str) -> str:
    """`text` cut to 60 characters, ending in `...` when cut."""
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _show(value: object) -> str:
    """A value from the file as it is safe to print: `repr()`, cut to 60 characters."""
    return _clip(repr(value))


def _choices(names: Iterable[str]) -> str:
    """`a`, `b`, `c` for a message."""
    return ", ".join(f"`{name}`" for name in names)


def _guess(word: str, names: Sequence[str]) -> str | None:
    """The name closest to a misspelt `word`, if one is close."""
    if len(word) > _SHOW_MAX:
        return None
    matches = difflib.get_close_matches(word, names, n=1)
    return matches[0] if matches else None


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    """The message for a key the schema does not have."""
    if not allowed:
        return f"unknown key {_show(key)}; remove it (this takes no options yet)"
    guess = _guess(key, allowed)
    if guess is not None:
        return f"unknown key {_show(key)}; did you mean `{guess}`?"
    return f"unknown key {_show(key)}; remove it or use one of {_choices(allowed)}"


def _join(path: str, key: str) -> str:
    """The path of `key` inside `path`: `a.b`, or `a['odd key']` for keys unsafe to print."""
    if _PLAIN_KEY_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_show(key)}]"


def _position(problem: Problem) -> tuple[bool, int, int]:
    """Sort key: problems without a location first, then by line and column."""
    where = problem.location
    return (where is not None, where.line if where else 0, where.column if where else 0)


# --- composing YAML into a located tree -----------------------------------------------------


class _Mark(Protocol):
    """A position in the text: PyYAML's Mark, or the C parser's."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


class _Reported(enum.Enum):
    """Marks a value whose problem is already recorded, so no second message follows."""

    VALUE = enum.auto()


@dataclass(slots=True)
class _Leaf:
    """A scalar: its Python value (None, bool, int, float, str, date) and its text as written.

    The located tree's nodes are not frozen: a parse of 10,000 targets makes ~170,000 of them,
    and a frozen dataclass takes twice as long to make. Nothing changes them once made."""

    at: SourceLocation
    value: object
    raw: str


@dataclass(slots=True)
class _Seq:
    at: SourceLocation
    items: tuple[_Node, ...]


@dataclass(slots=True)
class _Field:
    key_at: SourceLocation
    node: _Node


@dataclass(slots=True)
class _Map:
    at: SourceLocation
    fields: Mapping[str, _Field]


_Node: TypeAlias = _Leaf | _Seq | _Map


@dataclass(slots=True)
class _Context:
    """The problems found so far in one file; for reading again only what changed since
    `previous` (the running config's targets by location), the text and where its target
    entries and `defaults` section lie in it (`spans`, id of the node → start and end; filled
    by `_compose_plain` for an ASCII text)."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    previous: Mapping[SourceLocation, TargetConfig] = field(default_factory=dict)
    text: str = ""
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)
    defaults_span: tuple[int, int] | None = None

    def at(self, mark: _Mark) -> SourceLocation:
        """PyYAML's 0-based mark as a 1-based location."""
        return SourceLocation(self.source, mark.line + 1, mark.column + 1)

    def add(self, at: SourceLocation | None, path: str, message: str) -> None:
        self.problems.append(Problem(at, path, message, self.source))


class _TooDeepError(yaml.MarkedYAMLError):
    """The YAML nests deeper than any configuration needs."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that never follows aliases, forgets anchors and bounds nesting depth."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.anchored: dict[int, str] = {}  # id(node) → anchor name, to report later

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in the stubs
        if self.depth >= _MAX_DEPTH:
            message = (
                f"the YAML nests deeper than {_MAX_DEPTH} levels, a configuration needs 5;"
                " check the brackets"
            )
            raise _TooDeepError(problem=message, problem_mark=event.start_mark)
        if self.check_event(yaml.AliasEvent):
            self.get_event()  # type: ignore[no-untyped-call]
            return yaml.ScalarNode(_ALIAS_TAG, event.anchor, event.start_mark, event.end_mark)
        self.anchors.clear()  # anchors are refused; forgetting them also allows duplicates
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if event.anchor is not None and node is not None:
            self.anchored[id(node)] = event.anchor
        return node


_FAST_LOADER: type[_Loader] = _Loader
if _LIBYAML:

    class _FastLoader(CParser, _Loader):
        """_Loader with libyaml's scanner and parser (6 times faster) but PyYAML's composer, so
        that aliases, anchors and depth still go through `_Loader.compose_node`: the C
        composer, which recursed to a segfault at 100,000 nesting levels, is never used.
        PyYAML's reader still checks the characters, and a YAML error is reported by the
        pure-Python loader (see `_compose`): every message and location stays PyYAML's."""

        get_single_node = yaml.composer.Composer.get_single_node
        get_node = yaml.composer.Composer.get_node
        check_node = yaml.composer.Composer.check_node
        dispose = _Loader.dispose

        def __init__(self, text: str) -> None:
            _Loader.__init__(self, text)
            CParser.__init__(self, text)

    _FAST_LOADER = _FastLoader


class _NotPlainError(Exception):
    """The text needs a full composer: `_compose_plain` took it for something else."""


_RESOLVER: Final = yaml.resolver.Resolver()
# The first characters of a plain scalar that may make it something other than a string.
_RESOLVED_FIRST: Final = frozenset(k for k in yaml.SafeLoader.yaml_implicit_resolvers if k)
_PLAIN_DEPTH: Final = 16  # deeper than our schema: left to the composer that bounds depth


def _compose_plain(context: _Context, text: str) -> _Node | None:
    """The located tree of `text` in one pass over libyaml's events, for the common file:
    one document, printable characters, string keys, each key once, no anchor, alias or tag,
    nesting well under `_MAX_DEPTH`. Anything else raises `_NotPlainError` (a YAML error raises
    YAMLError) and the file goes to the composers that report it. Makes the tree that
    libyaml's parser, PyYAML's composer and `_Converter` make, in half their time
    (tests/test_config_loader.py compares the trees)."""
    if not _LIBYAML or "\t" in text or _NON_PRINTABLE.search(text):
        raise _NotPlainError
    return _PlainComposer(context, text.isascii()).compose(text)


class _PlainComposer:
    """`_compose_plain`'s state: one frame per open collection, `[at, fields or items,
    pending key, its location, start index]`. With `spans` it records in the context where
    each target entry and the `defaults` section lie, by libyaml's indexes; only for an
    ASCII text, where characters, bytes and code points agree (a byte order mark or other
    characters cannot shift what is sliced and compared)."""

    __slots__ = ("constructor", "context", "root", "spans", "stack")

    def __init__(self, context: _Context, spans: bool) -> None:
        self.context = context
        self.spans = spans
        self.stack: list[list[Any]] = []
        self.root: _Node | None = None
        self.constructor = yaml.constructor.SafeConstructor()

    def compose(self, text: str) -> _Node | None:
        get: Callable[[], Any] = CParser(text).get_event
        get()  # StreamStart
        if isinstance(get(), yaml.StreamEndEvent):
            return None
        scalar, mapping_start, sequence_start = (
            yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)
        mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
        while True:
            event = get()
            kind = type(event)
            node: _Node | None
            if kind is scalar:
                node = self.scalar(event)
            elif kind is mapping_start or kind is sequence_start:
                self.open(event, {} if kind is mapping_start else [])
                continue
            elif kind is mapping_end or kind is sequence_end:
                at, into, _, _, start = self.stack.pop()
                node = _Map(at, into) if kind is mapping_end else _Seq(at, tuple(into))
                if self.spans and len(self.stack) <= 2 and event.end_mark is not None:
                    self.span(node, start, event.end_mark.index)
            elif kind is yaml.DocumentEndEvent and not self.stack:
                if not isinstance(get(), yaml.StreamEndEvent):
                    raise _NotPlainError  # a second document
                return self.root
            else:
                raise _NotPlainError  # an alias
            if node is not None:
                self.place(node)

    def place(self, node: _Node) -> None:
        """`node` as the root, the pending key's value, or the next item."""
        if not self.stack:
            self.root = node
            return
        top = self.stack[-1]
        if type(top[1]) is dict:
            top[1][top[2]] = _Field(top[3], node)
            top[2] = None
        else:
            top[1].append(node)

    def span(self, node: _Node, start: int, end: int) -> None:
        """Records where `node` lies if it is a target entry or the `defaults` section."""
        stack = self.stack
        if len(stack) == 2 and stack[0][2] == "targets" and type(stack[1][1]) is list:
            self.context.spans[id(node)] = (start, end)
        elif len(stack) == 1 and stack[0][2] == "defaults":
            self.context.defaults_span = (start, end)

    def at(self, event: yaml.Event) -> SourceLocation:
        mark = event.start_mark
        if mark is None:
            raise _NotPlainError
        return self.context.at(mark)

    def open(self, event: yaml.CollectionStartEvent, into: dict[str, _Field] | list[_Node],
             ) -> None:
        """A new frame for the collection `event` starts; its node comes at its end."""
        stack = self.stack
        if event.anchor is not None or event.tag is not None or len(stack) >= _PLAIN_DEPTH:
            raise _NotPlainError
        if stack and type(stack[-1][1]) is dict and stack[-1][2] is None:
            raise _NotPlainError  # a collection as a key
        mark = event.start_mark
        if mark is None:
            raise _NotPlainError
        stack.append([self.context.at(mark), into, None, None, mark.index])

    def scalar(self, event: yaml.ScalarEvent) -> _Leaf | None:
        """The scalar's leaf, or None for a key (then pending in its mapping's frame)."""
        if event.anchor is not None or event.tag is not None:
            raise _NotPlainError
        at, raw, tag = self.at(event), event.value, _STR_TAG
        if event.implicit[0] and (not raw or raw[0] in _RESOLVED_FIRST):
            tag = _RESOLVER.resolve(yaml.ScalarNode, raw, event.implicit)  # type: ignore[no-untyped-call]
        top = self.stack[-1] if self.stack else None
        if top is not None and type(top[1]) is dict and top[2] is None:
            if tag != _STR_TAG or raw in top[1]:
                raise _NotPlainError  # a key that is not a string, or a duplicate
            top[2], top[3] = raw, at
            return None
        if tag == _STR_TAG:
            return _Leaf(at, raw, raw)
        try:
            node = yaml.ScalarNode(tag, raw)
            return _Leaf(at, self.constructor.construct_object(node), raw)
        except (yaml.YAMLError, ValueError, OverflowError):
            raise _NotPlainError from None


_NON_PRINTABLE: Final = yaml.reader.Reader.NON_PRINTABLE  # what PyYAML's reader refuses


def _compose(context: _Context, text: str,
             loader_class: type[_Loader] = _Loader) -> _Node | None:
    """The located tree of `text`, or None for an empty file; ConfigError on invalid YAML
    (the fast loader lets the YAMLError through: `parse_config` asks PyYAML again)."""
    try:
        loader, root = _compose_with(loader_class, text)
    except yaml.YAMLError as err:
        if loader_class is not _Loader:
            raise
        raise ConfigError([_yaml_problem(context, text, err)]) from None
    return None if root is None else _Converter(context, loader).node(root, "")


def _compose_with(loader_class: type[_Loader], text: str) -> tuple[_Loader, yaml.Node | None]:
    loader = loader_class(text)
    try:
        return loader, loader.get_single_node()
    finally:
        loader.dispose()


def _yaml_problem(context: _Context, text: str, err: yaml.YAMLError) -> Problem:
    """The problem for a YAML error PyYAML raised."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = context.at(mark) if mark is not None else None
        return Problem(where, "", _syntax_message(err), context.source)
    if isinstance(err, ReaderError) and isinstance(err.position, int):
        line = text.count("\n", 0, err.position) + 1
        column = err.position - text.rfind("\n", 0, err.position)
        char = chr(err.character) if isinstance(err.character, int) else err.character
        message = f"the character {_show(char)} is not allowed in a YAML file; remove it"
        return Problem(SourceLocation(context.source, line, column), "", message, context.source)
    return Problem(None, "", f"invalid YAML: {err}; fix the syntax", context.source)


def _syntax_message(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's explanation, followed by what to check."""
    if isinstance(err, _TooDeepError):
        return err.problem or ""
    what = _syntax_what(err)
    if "'\\t'" in what:
        return f"invalid YAML: {what}; indent with spaces, not tabs"
    if "another document" in what:
        return f"invalid YAML: {what}; remove the `---` line, hostwatch reads one document"
    return f"invalid YAML: {what}; check the indentation, quotes and colons here"


def _syntax_what(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem with its context: `problem (while ... at line L, column C)`."""
    problem, where = err.problem or "", err.context or ""
    if not where.startswith("while"):
        return f"{where}, {problem}" if where and problem else where or problem
    mark, at = err.context_mark, err.problem_mark
    if mark is None or (at is not None and (mark.line, mark.column) == (at.line, at.column)):
        return f"{problem} ({where})"
    return f"{problem} ({where} at line {mark.line + 1}, column {mark.column + 1})"


@dataclass(frozen=True, slots=True)
class _Converter:
    """Turns PyYAML nodes into `_Node`s, recording structural problems on the way."""

    context: _Context
    loader: _Loader

    def node(self, node: yaml.Node, path: str) -> _Node:
        at = self.context.at(node.start_mark)
        anchor = self.loader.anchored.get(id(node))
        if anchor is not None:
            self.refuse(at, path, f"YAML anchors (`&{_clip(anchor)}`) are not allowed")
        if isinstance(node, yaml.MappingNode) and node.tag == _YAML_TAG + "map":
            return self.mapping(node, at, path)
        if isinstance(node, yaml.SequenceNode) and node.tag == _YAML_TAG + "seq":
            return _Seq(at, tuple(self.node(n, f"{path}[{i}]") for i, n in enumerate(node.value)))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, at, path)
        message = f"the YAML tag {_show(node.tag)} is not supported; remove the tag"
        self.context.add(at, path, message)
        return _Leaf(at, _Reported.VALUE, "")

    def refuse(self, at: SourceLocation, path: str, what: str) -> None:
        self.context.add(at, path, f"{what}; write the value out in full")

    def scalar(self, node: yaml.ScalarNode, at: SourceLocation, path: str) -> _Leaf:
        raw = str(node.value)
        if node.tag == _ALIAS_TAG:
            self.refuse(at, path, f"YAML aliases (`*{_clip(raw)}`) are not allowed")
        elif node.tag not in _SCALAR_TAGS:
            message = f"the YAML tag {_show(node.tag)} is not supported; remove the tag"
            self.context.add(at, path, message)
        else:
            try:
                return _Leaf(at, self.loader.construct_object(node), raw)
            except (yaml.YAMLError, ValueError, OverflowError):
                kind = node.tag.removeprefix(_YAML_TAG)
                self.context.add(at, path, f"{_show(raw)} is not a valid {kind}; fix or quote it")
        return _Leaf(at, _Reported.VALUE, raw)

    def mapping(self, node: yaml.MappingNode, at: SourceLocation, path: str) -> _Map:
        fields: dict[str, _Field] = {}
        anchored = self.loader.anchored
        for key_node, value_node in node.value:
            if (type(key_node) is yaml.ScalarNode and key_node.tag == _STR_TAG
                    and id(key_node) not in anchored):
                key: str | None = key_node.value  # a plain string key: nothing to check
            else:
                key = self.key(key_node, path)
            if key is None:
                continue
            key_at = self.context.at(key_node.start_mark)
            first = fields.get(key)
            if first is not None:
                where = f"line {first.key_at.line}, column {first.key_at.column}"
                message = f"duplicate key {_show(key)} (first at {where}); keep only one"
                self.context.add(key_at, path, message)
                continue
            fields[key] = _Field(key_at, self.node(value_node, _join(path, key)))
        return _Map(at, fields)

    def key(self, node: yaml.Node, path: str) -> str | None:
        """The key as a string, or None after recording why it cannot be one."""
        at = self.context.at(node.start_mark)
        if node.tag == _YAML_TAG + "merge":
            message = "YAML merge keys (`<<`) are not allowed; write the keys out in full"
            self.context.add(at, path, message)
            return None
        key = self.node(node, path)
        if isinstance(key, _Leaf) and isinstance(key.value, str) and node.tag == _YAML_TAG + "str":
            return key.value
        if not _reported(key):
            todo = "write a string key"
            if isinstance(key, _Leaf) and key.value is not None:
                todo = f'quote the key: "{_clip(key.raw)}"'
            self.context.add(at, path, f"keys must be strings, got {_describe(key)}; {todo}")
        return None


def _reported(node: _Node) -> bool:
    return isinstance(node, _Leaf) and node.value is _Reported.VALUE


def _describe(node: _Node) -> str:
    """What the node is, for `expected X, got Y`."""
    if isinstance(node, _Map):
        return "a mapping"
    if isinstance(node, _Seq):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a number"))
    kind = next((name for cls, name in kinds if isinstance(value, cls)), "a date")
    return f"{kind} ({_clip(node.raw)})"


# --- checking values ------------------------------------------------------------------------


def _wrong_type(context: _Context, node: _Node, path: str, expected: str, todo: str) -> None:
    """Record `expected X, got Y; todo` unless the node's problem is already recorded."""
    if not _reported(node):
        context.add(node.at, path, f"expected {expected}, got {_describe(node)}; {todo}")


def _quote_hint(node: _Node, fallback: str) -> str:
    """`quote it: "5"` for a scalar YAML read as a number or boolean, else `fallback`."""
    if isinstance(node, _Leaf) and node.value is not None and not isinstance(node.value, str):
        return f'quote it: "{_clip(node.raw)}"'
    return fallback


def _is_int(value: object) -> TypeGuard[int]:
    """Whether `value` is an integer; a boolean is not."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    """Whether `value` is an integer or a float; a boolean is neither."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(context: _Context, node: _Node, path: str, limits: _Range) -> int | None:
    low, high = int(limits.low), int(limits.high)
    if not isinstance(node, _Leaf) or not _is_int(node.value):
        todo = f"write a whole number from {low} to {high}"
        _wrong_type(context, node, path, "an integer", todo)
        return None
    if not low <= node.value <= high:
        message = f"{_clip(node.raw)} is out of range; use a whole number from {low} to {high}"
        context.add(node.at, path, message)
        return None
    return node.value


def _ratio(context: _Context, node: _Node, path: str, limits: _Range) -> float | None:
    """A number within `limits` (a share such as 0.1 for 10%)."""
    todo = f"write a number from {limits.low:g} to {limits.high:g}, such as 0.1 for 10%"
    if not isinstance(node, _Leaf) or not _is_number(node.value):
        _wrong_type(context, node, path, "a number", todo)
        return None
    value = float(node.value)
    if not limits.low <= value <= limits.high:
        context.add(node.at, path, f"{_clip(node.raw)} is out of range; {todo}")
        return None
    return value


def _duration(context: _Context, node: _Node, path: str, limits: _Range) -> float | None:
    value = node.value if isinstance(node, _Leaf) else None
    if not isinstance(value, str) and not _is_number(value):
        _wrong_type(context, node, path, "a duration", "write one such as 2s, 500ms or 1m30s")
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        context.add(node.at, path, str(err))
        return None
    message = _duration_range_problem(seconds, limits, path.rpartition(".")[2])
    if message:
        context.add(node.at, path, message)
        return None
    return seconds


def _duration_range_problem(seconds: float, limits: _Range, key: str) -> str:
    """Why `seconds` is outside `limits`, or an empty string."""
    shown, low, high = (format_duration(x) for x in (seconds, limits.low, limits.high))
    if seconds < limits.low:
        return f"{shown} is shorter than the minimum {low}; set {key} to at least {low}"
    if seconds > limits.high:
        return f"{shown} is longer than the maximum {high}; set {key} to at most {high}"
    return ""


def _choice(context: _Context, node: _Node, path: str, kind: type[_E]) -> _E | None:
    value = node.value if isinstance(node, _Leaf) else None
    names = [member.value for member in kind]
    if not isinstance(value, str):
        _wrong_type(context, node, path, f"one of {_choices(names)}", "write one of them")
        return None
    if value in names:
        return kind(value)
    guess = _guess(value, names)
    todo = f"did you mean `{guess}`?" if guess else "use one of them"
    context.add(node.at, path, f"{_show(value)} is not one of {_choices(names)}; {todo}")
    return None


def _string(context: _Context, node: _Node, path: str, todo: str) -> str | None:
    value = node.value if isinstance(node, _Leaf) else None
    if isinstance(value, str):
        return value
    _wrong_type(context, node, path, "a string", _quote_hint(node, todo))
    return None


def _parse_duration_text(text: str) -> float:
    """Seconds from a Prometheus duration string."""
    match = _DURATION_RE.fullmatch(text) if len(text) <= _DURATION_TEXT_MAX else None
    if text == "0":
        return 0.0
    if match is None or not text:
        raise ValueError(_bad_duration_message(text))
    amounts = zip(match.groups(), _DURATION_UNITS, strict=True)
    millis = sum(int(amount) * size for amount, (_, size) in amounts if amount)
    return millis / 1000


def _bad_duration_message(text: str) -> str:
    if not text:
        return "the duration is empty; write one such as 2s, 500ms or 1m30s"
    if text.isascii() and text.isdigit():
        return f"{_show(text)} has no unit; write {text}s for seconds, or {text} without quotes"
    return (
        f"{_show(text)} is not a valid duration; write whole numbers with units ms, s, m, h, d, "
        "w, y from largest to smallest, such as 1m30s or 500ms"
    )


def _checked_seconds(value: float) -> float:
    """`value` seconds as a float, if finite and not negative."""
    try:
        seconds = float(value)
    except OverflowError:
        message = "the number of seconds is too large; write a duration such as 1h"
        raise ValueError(message) from None
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds} is not a finite number of seconds; write one such as 2")
    if seconds < 0:
        raise ValueError(f"{_show(value)} is negative; durations must be 0 or more seconds")
    return seconds


# --- checking strings: names, hosts, labels -------------------------------------------------


def _check_name(text: str) -> None:
    """Raise ValueError unless `text` is a valid target name."""
    allowed = "letters, digits and . _ : @ / + -, starting with a letter or digit"
    if not text:
        raise ValueError(f"the name is empty; use 1 to {_NAME_MAX} characters: {allowed}")
    if len(text) > _NAME_MAX:
        raise ValueError(f"{_show(text)} is {len(text)} characters long; use at most {_NAME_MAX}")
    if not _NAME_RE.fullmatch(text):
        bad = next((c for c in text if c not in _NAME_CHARS), text[0])
        raise ValueError(
            f"{_show(text)} is not a valid name: {_show(bad)} is not allowed here;"
            f" use only {allowed}"
        )


def _normalise_host(text: str) -> str:
    """`text` as the canonical IP literal or lowercase DNS name; ValueError if it is neither."""
    if not text:
        raise ValueError("the host is empty; write an IP address or a DNS name such as localhost")
    if len(text) > _DNS_NAME_MAX + 1:
        raise ValueError(f"{_show(text)} is {len(text)} characters long; use at most 253")
    if text.startswith("[") and text.endswith("]"):
        raise ValueError(f"{_show(text)} has brackets; write the address without them")
    if ":" in text:
        return _ipv6(text)
    last_label = text.rstrip(".").rpartition(".")[2]
    if last_label.isascii() and last_label.isdigit():
        return _ipv4(text)
    return _dns_name(text)


def _ipv6(text: str) -> str:
    if "%" in text:
        raise ValueError(f"{_show(text)} has a zone id; zone ids are not supported, remove it")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ValueError(
            f"{_show(text)} is not a valid IPv6 address; write one such as ::1"
            " (a port belongs in probes.tcp.port, not in host)"
        ) from None


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(
            f"{_show(text)} is not a valid IPv4 address; write four numbers from 0 to 255"
            " without leading zeros, such as 127.0.0.1"
        ) from None


def _dns_name(text: str) -> str:
    name = text.removesuffix(".")
    if len(name) > _DNS_NAME_MAX:
        raise ValueError(f"{_show(text)} is {len(name)} characters long; use at most 253")
    for label in name.split("."):
        if not _DNS_LABEL_RE.fullmatch(label) or len(label) > _DNS_LABEL_MAX:
            raise ValueError(
                f"{_show(text)} is not a valid host name: {_dns_label_problem(label)}; write an"
                " IP address or a DNS name of letters, digits, '-' and '.'"
            )
    return text.lower()


def _dns_label_problem(label: str) -> str:
    if not label:
        return "it has an empty label"
    bad = next((c for c in label if c not in _DNS_CHARS), None)
    if bad is not None:
        return f"{_show(bad)} is not allowed"
    if len(label) > _DNS_LABEL_MAX:
        return f"a label is longer than {_DNS_LABEL_MAX} characters"
    return f"the label {_show(label)} starts or ends with '-'"


def _label_name_problem(name: str) -> str:
    """Why `name` cannot be a label name, or an empty string."""
    if not _LABEL_NAME_RE.fullmatch(name):
        return (
            f"{_show(name)} is not a valid label name; use letters, digits and _,"
            " not starting with a digit"
        )
    if name.startswith("__"):
        return f"{_show(name)} starts with `__`, which Prometheus reserves; rename it"
    if name in _RESERVED_LABELS:
        return f"{_show(name)} is a label hostwatch sets itself; choose another name"
    return ""


def _label_value_problem(value: str) -> str:
    """Why `value` cannot be a label value, or an empty string."""
    if len(value) > _LABEL_VALUE_MAX:
        return f"{_show(value)} is {len(value)} characters long; use at most {_LABEL_VALUE_MAX}"
    control = _CONTROL_RE.search(value)
    if control is not None:
        return f"{_show(value)} contains the control character {_show(control.group())}; remove it"
    return ""


def _loopback_for(listen_host: str) -> str:
    """The listen address itself if it is loopback; else `::1` for an IPv6 literal and
    `127.0.0.1` otherwise: never a non-loopback address."""
    host = listen_host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "127.0.0.1"
    if address.is_loopback:
        return str(address)
    return "::1" if address.version == 6 else "127.0.0.1"


# --- the schema -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Section:
    """A mapping of the schema: typed accessors that record problems and return None."""

    context: _Context
    map: _Map
    path: str

    def allow(self, keys: Sequence[str]) -> None:
        for key, entry in self.map.fields.items():
            if key not in keys:
                self.context.add(entry.key_at, self.path, _unknown_key(key, keys))

    def get(self, key: str) -> _Node | None:
        entry = self.map.fields.get(key)
        return None if entry is None else entry.node

    def at(self, key: str) -> SourceLocation | None:
        node = self.get(key)
        return None if node is None else node.at

    def sub(self, key: str) -> str:
        return _join(self.path, key)

    def require(self, key: str, todo: str) -> _Node | None:
        node = self.get(key)
        if node is None:
            self.context.add(self.map.at, self.path, f"missing required key `{key}`; {todo}")
        return node

    def integer(self, key: str, limits: _Range) -> int | None:
        node = self.get(key)
        return None if node is None else _integer(self.context, node, self.sub(key), limits)

    def duration(self, key: str, limits: _Range) -> float | None:
        node = self.get(key)
        return None if node is None else _duration(self.context, node, self.sub(key), limits)

    def choice(self, key: str, kind: type[_E]) -> _E | None:
        node = self.get(key)
        return None if node is None else _choice(self.context, node, self.sub(key), kind)

    def ratio(self, key: str, limits: _Range) -> float | None:
        node = self.get(key)
        return None if node is None else _ratio(self.context, node, self.sub(key), limits)

    def section(self, key: str, expected: str, todo: str = _SEE_DOCS) -> _Section | None:
        """The nested mapping at `key` (null counts as empty); None if absent or not a mapping."""
        node = self.get(key)
        return None if node is None else _open(self.context, node, self.sub(key), expected, todo)


def _open(
    context: _Context, node: _Node, path: str, expected: str, todo: str = _SEE_DOCS
) -> _Section | None:
    """`node` as a section; null is an empty one. Records a problem for anything else."""
    if isinstance(node, _Map):
        return _Section(context, node, path)
    if isinstance(node, _Leaf) and node.value is None:
        return _Section(context, _Map(node.at, {}), path)
    _wrong_type(context, node, path, expected, todo)
    return None


@dataclass(frozen=True, slots=True)
class _Settings:
    """The keys of `defaults` a mapping sets; None where absent or invalid."""

    interval: float | None = None
    timeout: float | None = None
    failure_threshold: int | None = None
    success_threshold: int | None = None
    window: int | None = None
    ip_protocol: IpProtocol | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    degraded_loss_ratio: float | None = None
    degraded_rtt: float | None = None
    flap_window: float | None = None
    flap_start: int | None = None
    flap_stop: int | None = None
    rtt_histogram: bool | None = None
    interval_at: SourceLocation | None = None  # where written, even if invalid
    timeout_at: SourceLocation | None = None
    flap_at: SourceLocation | None = None  # where flap_start or flap_stop is written

    def over(self, base: _Settings) -> _Settings:
        """These settings with `base` filling the gaps; labels merged, ours winning."""
        if self is _NO_SETTINGS:
            return base  # a target that sets nothing itself: most of them
        return _Settings(
            interval=_or(self.interval, base.interval),
            timeout=_or(self.timeout, base.timeout),
            failure_threshold=_or(self.failure_threshold, base.failure_threshold),
            success_threshold=_or(self.success_threshold, base.success_threshold),
            window=_or(self.window, base.window),
            ip_protocol=_or(self.ip_protocol, base.ip_protocol),
            labels={**base.labels, **self.labels},
            degraded_loss_ratio=_or(self.degraded_loss_ratio, base.degraded_loss_ratio),
            degraded_rtt=_or(self.degraded_rtt, base.degraded_rtt),
            flap_window=_or(self.flap_window, base.flap_window),
            flap_start=_or(self.flap_start, base.flap_start),
            flap_stop=_or(self.flap_stop, base.flap_stop),
            rtt_histogram=_or(self.rtt_histogram, base.rtt_histogram),
        )


def _or(value: _T | None, fallback: _T) -> _T:
    return fallback if value is None else value


_NO_SETTINGS: Final = _Settings()


def _read_settings(section: _Section) -> _Settings:
    if section.map.fields.keys().isdisjoint(_SETTING_KEYS):
        return _NO_SETTINGS  # most targets set none: skip thirteen lookups
    return _Settings(
        interval=section.duration("interval", _INTERVAL),
        timeout=section.duration("timeout", _TIMEOUT),
        failure_threshold=section.integer("failure_threshold", _THRESHOLD),
        success_threshold=section.integer("success_threshold", _THRESHOLD),
        window=section.integer("window", _WINDOW),
        ip_protocol=section.choice("ip_protocol", IpProtocol),
        labels=_read_labels(section),
        degraded_loss_ratio=section.ratio("degraded_loss_ratio", _RATIO),
        degraded_rtt=section.duration("degraded_rtt", _DEGRADED_RTT),
        flap_window=section.duration("flap_window", _FLAP_WINDOW),
        flap_start=section.integer("flap_start", _FLAP_START),
        flap_stop=section.integer("flap_stop", _FLAP_STOP),
        rtt_histogram=_optional_flag(section, "rtt_histogram"),
        interval_at=section.at("interval"),
        timeout_at=section.at("timeout"),
        flap_at=section.at("flap_stop") or section.at("flap_start"),
    )


def _check_flap(context: _Context, own: _Settings, base: _Settings, path: str) -> None:
    """Where `own` sets flap_start or flap_stop, the merged stop must be below the start."""
    if own.flap_at is None:
        return
    start = _or(own.flap_start, _or(base.flap_start, DEFAULTS.flap_start))
    stop = _or(own.flap_stop, _or(base.flap_stop, DEFAULTS.flap_stop))
    if stop < start:
        return
    key = "flap_stop" if own.flap_stop is not None else "flap_start"
    message = (f"flap_stop {stop} is not below flap_start {start}; flapping must end at fewer "
               "transitions than it starts, e.g. flap_start: 6 and flap_stop: 2")
    context.add(own.flap_at, f"{path}.{key}", message)


def _check_timeout(context: _Context, own: _Settings, base: _Settings, path: str) -> None:
    """Where `own` sets interval or timeout, the merged timeout must not exceed the interval."""
    interval_bad = own.interval_at is not None and own.interval is None
    timeout_bad = own.timeout_at is not None and own.timeout is None
    if interval_bad or timeout_bad or (own.interval_at is None and own.timeout_at is None):
        return
    interval = _or(own.interval, _or(base.interval, DEFAULTS.interval))
    timeout = _or(own.timeout, _or(base.timeout, DEFAULTS.timeout))
    if timeout <= interval:
        return
    shown_interval, shown_timeout = format_duration(interval), format_duration(timeout)
    if own.timeout_at is not None:
        inherited = _inherited(own.interval, base.interval, "interval")
        message = (
            f"{shown_timeout} is longer than the interval {shown_interval}{inherited};"
            " set timeout to at most the interval"
        )
        context.add(own.timeout_at, f"{path}.timeout", message)
        return
    inherited = _inherited(own.timeout, base.timeout, "timeout")
    message = (
        f"{shown_interval} is shorter than the timeout {shown_timeout}{inherited};"
        f" set timeout to at most {shown_interval} here too, or use a longer interval"
    )
    context.add(own.interval_at, f"{path}.interval", message)


def _inherited(own: float | None, base: float | None, key: str) -> str:
    """Where a value not set here comes from, for a message."""
    if own is not None:
        return ""
    return f" (from defaults.{key})" if base is not None else " (the built-in default)"


def _read_labels(section: _Section) -> dict[str, str]:
    """The valid labels of `section`; problems recorded for the others."""
    labels = section.section("labels", "a mapping of label names to strings")
    if labels is None:
        return {}
    result: dict[str, str] = {}
    for name, entry in labels.map.fields.items():
        problem = _label_name_problem(name)
        if problem:
            section.context.add(entry.key_at, labels.path, problem)
            continue
        value = _label_value(section.context, entry.node, labels.sub(name))
        if value is not None:
            result[name] = value
    return result


def _label_value(context: _Context, node: _Node, path: str) -> str | None:
    value = _string(context, node, path, "write a string value")
    problem = "" if value is None else _label_value_problem(value)
    if problem:
        context.add(node.at, path, problem)
        return None
    return value


def _build_config(context: _Context, root: _Node | None) -> Config | None:
    """The Config, or None after recording every problem of the file."""
    if root is None:
        context.add(None, "", "the file has no YAML document; write at least `targets: []`")
        return None
    top = _open(context, root, "", "a mapping", "write `key: value` lines such as `targets: []`")
    if top is None:
        return None
    top.allow(_TOP_KEYS)
    defaults = _read_defaults(top)
    icmp = _read_icmp(top)
    dns_refresh = top.duration("dns_refresh", _DNS_REFRESH)
    buckets = _read_buckets(top)
    dns_servers = _read_dns_servers(top)
    targets = _read_targets(top, defaults)
    maintenance = _read_maintenance(top, targets or ())
    shard = _read_shard(top)
    target_files = _read_target_files(top, defaults, targets or ())
    if context.problems or targets is None:
        return None
    return Config(
        targets=targets,
        icmp=icmp,
        dns_refresh=_or(dns_refresh, DEFAULTS.dns_refresh),
        dns_servers=dns_servers,
        maintenance=maintenance,
        shard=shard,
        target_files=target_files,
        histogram_buckets=_or(buckets, DEFAULTS.histogram_buckets),
        source=context.source,
    )


def _read_defaults(top: _Section) -> _Settings:
    section = top.section("defaults", "a mapping of default target settings")
    if section is None:
        return _Settings()
    section.allow(_SETTING_KEYS)
    defaults = _read_settings(section)
    _check_timeout(top.context, defaults, _Settings(), "defaults")
    _check_flap(top.context, defaults, _Settings(), "defaults")
    return defaults


def _read_icmp(top: _Section) -> IcmpSettings:
    section = top.section("icmp", "a mapping with `mode` and `payload_size`")
    if section is None:
        return IcmpSettings()
    section.allow(_ICMP_KEYS)
    return IcmpSettings(
        mode=_or(section.choice("mode", IcmpMode), DEFAULTS.icmp_mode),
        payload_size=_or(section.integer("payload_size", _PAYLOAD), DEFAULTS.icmp_payload_size),
    )


def _read_buckets(top: _Section) -> tuple[float, ...] | None:
    node, path = top.get("histogram_buckets"), "histogram_buckets"
    if node is None:
        return None
    if not isinstance(node, _Seq):
        _wrong_type(top.context, node, path, "a list of numbers", "write one such as [0.01, 0.1]")
        return None
    if not 1 <= len(node.items) <= _BUCKETS_MAX:
        count = f"{len(node.items)} buckets are too many" if node.items else "no buckets"
        message = f"{count}; give 1 to {_BUCKETS_MAX} upper bounds in seconds"
        top.context.add(node.at, path, message)
        return None
    bounds = [_bucket(top.context, item, f"{path}[{i}]") for i, item in enumerate(node.items)]
    if not _increasing(top.context, node.items, bounds, path):
        return None
    return tuple(bound for bound in bounds if bound is not None)


def _bucket(context: _Context, node: _Node, path: str) -> float | None:
    if not isinstance(node, _Leaf) or not _is_number(node.value):
        _wrong_type(context, node, path, "a number", "write seconds without unit or quotes")
        return None
    if node.value == math.inf:
        message = f"{_clip(node.raw)} is not a valid bound; remove it, the +Inf bucket is implied"
        context.add(node.at, path, message)
        return None
    try:
        bound = _checked_seconds(node.value)
    except ValueError as err:
        context.add(node.at, path, str(err))
        return None
    if bound == 0:
        context.add(node.at, path, f"{_clip(node.raw)} is not positive; use a bound above 0")
        return None
    return bound


def _increasing(
    context: _Context, nodes: Sequence[_Node], bounds: Sequence[float | None], path: str
) -> bool:
    """Whether the valid `bounds` strictly increase; records each one that does not."""
    previous: float | None = None
    ok = all(bound is not None for bound in bounds)
    for index, (node, bound) in enumerate(zip(nodes, bounds, strict=True)):
        if bound is None:
            continue
        if previous is not None and bound <= previous:
            message = (
                f"{_clip(str(bound))} is not above the previous bound {_clip(str(previous))};"
                " list the bounds in strictly increasing order"
            )
            context.add(node.at, f"{path}[{index}]", message)
            ok = False
        previous = bound
    return ok


def _read_targets(top: _Section, defaults: _Settings) -> tuple[TargetConfig, ...] | None:
    node = top.require("targets", "add a list of targets (`targets: []` for none)")
    if node is None:
        return None
    if not isinstance(node, _Seq):
        _wrong_type(top.context, node, "targets", "a list", "write `- name: ...` items")
        return None
    seen: dict[str, SourceLocation] = {}
    context = top.context
    digests = _Digests(context)
    found: list[TargetConfig | None] = []
    for index, item in enumerate(node.items):
        digest = digests.of(item)
        kept = _unchanged(context, item, digest, seen)
        found.append(kept if kept is not None else
                     _read_target(context, item, f"targets[{index}]", defaults, seen,
                                  digest=digest))
    return tuple(target for target in found if target is not None)


class _Digests:
    """Digests of target entries: the entry's text and the `defaults` section's (all a
    target inherits from the file), for the entries whose place the composer recorded."""

    __slots__ = ("base", "context")

    def __init__(self, context: _Context) -> None:
        self.context = context
        span = context.defaults_span
        self.base = hashlib.blake2b(digest_size=16)
        self.base.update(context.text[span[0]:span[1]].encode() if span else b"")
        self.base.update(b"\0")

    def of(self, item: _Node) -> bytes:
        span = self.context.spans.get(id(item))
        if span is None:
            return b""
        digest = self.base.copy()
        digest.update(self.context.text[span[0]:span[1]].encode())
        return digest.digest()


def _unchanged(context: _Context, item: _Node, digest: bytes,
               seen: dict[str, SourceLocation]) -> TargetConfig | None:
    """The running config's target for an entry with the same text and defaults at the same
    place: reading it again would make an equal target (~50 µs each)."""
    if not digest or not isinstance(item, _Map):
        return None
    kept = context.previous.get(item.at)
    name = item.fields.get("name")
    if kept is None or kept.text_digest != digest or name is None or kept.name in seen:
        return None  # changed, or a duplicate name: read it and report
    seen[kept.name] = name.node.at
    return kept


def _read_target(
    context: _Context, node: _Node, path: str, defaults: _Settings,
    seen: dict[str, SourceLocation], *, digest: bytes = b"",
) -> TargetConfig | None:
    todo = "write the target as `name:`, `host:` and `probes:` keys"
    section = _open(context, node, path, "a mapping with `name`, `host` and `probes`", todo)
    if section is None:
        return None
    section.allow(_TARGET_KEYS)
    name = _read_name(section, seen)
    host = _read_host(section)
    probes = _read_probes(section, host)
    own = _read_settings(section)
    _check_timeout(context, own, defaults, path)
    _check_flap(context, own, defaults, path)
    if name is None or host is None or probes is None:
        return None
    return _make_target(name, host, probes, own.over(defaults), node.at, digest=digest)


def _make_target(
    name: str, host: str, probes: tuple[ProbeSpec, ...], settings: _Settings, at: SourceLocation,
    *, digest: bytes = b"",
) -> TargetConfig:
    return TargetConfig(
        name=name,
        host=host,
        probes=probes,
        interval=_or(settings.interval, DEFAULTS.interval),
        timeout=_or(settings.timeout, DEFAULTS.timeout),
        failure_threshold=_or(settings.failure_threshold, DEFAULTS.failure_threshold),
        success_threshold=_or(settings.success_threshold, DEFAULTS.success_threshold),
        window=_or(settings.window, DEFAULTS.window),
        ip_protocol=_or(settings.ip_protocol, DEFAULTS.ip_protocol),
        labels=tuple(sorted(settings.labels.items())),
        degraded_loss_ratio=_or(settings.degraded_loss_ratio, DEFAULTS.degraded_loss_ratio),
        degraded_rtt=_or(settings.degraded_rtt, DEFAULTS.degraded_rtt),
        flap_window=_or(settings.flap_window, DEFAULTS.flap_window),
        flap_start=_or(settings.flap_start, DEFAULTS.flap_start),
        flap_stop=_or(settings.flap_stop, DEFAULTS.flap_stop),
        rtt_histogram=_or(settings.rtt_histogram, DEFAULTS.rtt_histogram),
        source=at,
        text_digest=digest,
    )


def _read_name(section: _Section, seen: dict[str, SourceLocation]) -> str | None:
    node = section.require("name", "add a unique `name`, such as `name: db1`")
    if node is None:
        return None
    name = _string(section.context, node, section.sub("name"), "write the name as a string")
    if name is None:
        return None
    try:
        _check_name(name)
    except ValueError as err:
        section.context.add(node.at, section.sub("name"), str(err))
        return None
    return _unique(section, node.at, name, seen)


def _unique(
    section: _Section, at: SourceLocation, name: str, seen: dict[str, SourceLocation]
) -> str | None:
    first = seen.setdefault(name, at)
    if first is at:
        return name
    message = (
        f"duplicate target name {_show(name)} (first at line {first.line}, column"
        f" {first.column}); give every target a unique name"
    )
    section.context.add(at, section.sub("name"), message)
    return None


def _read_host(section: _Section) -> str | None:
    node = section.require("host", "add the address or DNS name to probe, such as `host: ::1`")
    if node is None:
        return None
    return _host_value(section, "host", node, "write the host as a string")


def _host_value(section: _Section, key: str, node: _Node, hint: str) -> str | None:
    """The address or DNS name at `key` (normalised), or None with the problem recorded."""
    text = _string(section.context, node, section.sub(key), hint)
    if text is None:
        return None
    try:
        return _normalise_host(text)
    except ValueError as err:
        section.context.add(node.at, section.sub(key), str(err))
        return None


def _read_probes(section: _Section, host: str | None) -> tuple[ProbeSpec, ...] | None:
    """The probes; `host` is the target's normalised host (None: none, or invalid)."""
    node = section.require("probes", "add at least one probe, such as `probes: {icmp: {}}`")
    if node is None:
        return None
    probes = _open(section.context, node, section.sub("probes"), "a mapping of probe kinds")
    if probes is None:
        return None
    probes.allow(_PROBE_KEYS)
    if not probes.map.fields:
        todo = f"add at least one of {_choices(_PROBE_KEYS)}, such as `icmp: {{}}`"
        section.context.add(probes.map.at, probes.path, f"no probes; {todo}")
        return None
    kinds = [kind for kind in ProbeKind if kind.value in probes.map.fields]
    name = _dns_name_only(host)
    specs = [_read_probe(probes, kind, name) for kind in kinds]
    if not specs or None in specs:
        return None
    return tuple(spec for spec in specs if spec is not None)


def _dns_name_only(host: str | None) -> str | None:
    """The normalised `host` if it is a DNS name (the default TLS server name), else None.
    Normalised, an IPv6 literal has a colon and an IPv4 literal only digits and dots (a DNS
    name whose last label is all digits is refused)."""
    if host is None or ":" in host or host.replace(".", "").isdigit():
        return None
    return host


def _read_probe(probes: _Section, kind: ProbeKind, host: str | None) -> ProbeSpec | None:
    if kind is ProbeKind.ICMP:
        return _read_icmp_probe(probes)
    if kind is ProbeKind.UDP:
        return _read_udp_probe(probes)
    if kind is ProbeKind.DNS:
        return _read_dns_probe(probes)
    return _read_tcp_probe(probes, host)


# --- options of tcp, udp and dns probes (docs/probes.md) -------------------------------------

_TCP_KEYS: Final = ("port", "tls", "steps")
_TLS_KEYS: Final = ("server_name", "verify", "ca_file", "cert_file", "key_file")
_STEP_KEYS: Final = ("send", "expect", "timeout")
_UDP_KEYS: Final = ("port", "payload", "expect")
_DNS_KEYS: Final = ("port", "query", "expect_rcode", "answer_contains", "answer_matches")
_QUERY_KEYS: Final = ("name", "type", "recursion_desired")
_STEPS_MAX: Final = 16
_RCODES_MAX: Final = 8
_STEP_TIMEOUT: Final = _Range(0.01, 60.0)
_BYTES_TODO: Final = "write the bytes as a string; escapes \\r, \\n, \\t, \\0, \\\\, \\xNN"
_REGEX_TODO: Final = "write a regular expression as a string, in single quotes"


def _read_tcp_probe(probes: _Section, host: str | None) -> ProbeSpec | None:
    section = probes.section("tcp", "a mapping", "write one such as `tcp: {port: 22}`")
    if section is None:
        return None
    before = len(section.context.problems)
    section.allow(_TCP_KEYS)
    port = _probe_port(section, "add the TCP port to connect to, such as `port: 22`")
    tls = _read_tls(section, host)
    steps = _read_steps(section)
    if port is None or len(section.context.problems) > before:
        return None
    return ProbeSpec(ProbeKind.TCP, port, tls=tls, steps=steps)


def _probe_port(section: _Section, todo: str, default: int | None = None) -> int | None:
    if default is None and section.require("port", todo) is None:
        return None
    return default if section.get("port") is None else section.integer("port", _PORT)


def _read_tls(section: _Section, host: str | None) -> TlsOptions | None:
    todo = "write one such as `tls: {server_name: www.example.com}`, or `tls: {}`"
    tls = section.section("tls", "a mapping of TLS settings", todo)
    if tls is None:
        return None
    before = len(tls.context.problems)
    tls.allow(_TLS_KEYS)
    options = TlsOptions(
        server_name=_server_name(tls, host),
        verify=_flag(tls, "verify", default=True) is not False,
        ca_file=_readable_file(tls, "ca_file"),
        cert_file=_readable_file(tls, "cert_file"),
        key_file=_readable_file(tls, "key_file"),
    )
    ca_at, key_at = tls.at("ca_file"), tls.at("key_file")
    if _flag(tls, "verify", default=True, report=False) is False and ca_at is not None:
        tls.context.add(ca_at, tls.sub("ca_file"), "ca_file is not used with `verify: false`;"
                        " remove it, or set `verify: true`")
    if key_at is not None and tls.get("cert_file") is None:
        tls.context.add(key_at, tls.sub("key_file"), "key_file needs cert_file; add the client"
                        " certificate as `cert_file:`")
    if len(tls.context.problems) == before:
        try:
            check_files(options)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            why = classify_tls_error(err)[1]
            tls.context.add(tls.map.at, tls.path, f"cannot use these TLS files: {why}; give PEM "
                            "files: CA certificates, and a client certificate with its "
                            "unencrypted key")
    return options


def _server_name(tls: _Section, host: str | None) -> str | None:
    node = tls.get("server_name")
    if node is None:
        return host
    return _host_value(tls, "server_name", node, "write a DNS name")


def _flag(section: _Section, key: str, *, default: bool, report: bool = True) -> bool | None:
    """A boolean at `key`, `default` if absent, None (recorded if `report`) if not a boolean."""
    node = section.get(key)
    if node is None:
        return default
    if isinstance(node, _Leaf) and isinstance(node.value, bool):
        return node.value
    if report:
        _wrong_type(section.context, node, section.sub(key), "a boolean", "write true or false")
    return None


def _optional_flag(section: _Section, key: str) -> bool | None:
    """A boolean at `key`; None if absent, or if not a boolean (recorded)."""
    return None if section.get(key) is None else _flag(section, key, default=False)


def _readable_file(section: _Section, key: str) -> str | None:
    node = section.get(key)
    if node is None:
        return None
    path = section.sub(key)
    text = _string(section.context, node, path, "write the path of a PEM file")
    if text is None:
        return None
    if not os.path.isabs(text):
        section.context.add(node.at, path, f"{_show(text)} is not an absolute path; write the "
                            "full path, such as /etc/hostwatch/ca.pem")
        return None
    try:
        with open(text, "rb"):
            pass
    except OSError as err:
        section.context.add(node.at, path, f"cannot read {_show(text)}: {err.strerror or err};"
                            " check the path and that hostwatch may read it")
        return None
    return text


def _read_steps(section: _Section) -> tuple[Step, ...]:
    node, path = section.get("steps"), section.sub("steps")
    if node is None:
        return ()
    todo = "write `- send: ...` and `- expect: ...` items"
    if not isinstance(node, _Seq):
        _wrong_type(section.context, node, path, "a list of steps", todo)
        return ()
    if not 1 <= len(node.items) <= _STEPS_MAX:
        count = f"{len(node.items)} steps are too many" if node.items else "no steps"
        section.context.add(node.at, path, f"{count}; give 1 to {_STEPS_MAX} steps, {todo}")
        return ()
    steps = [_read_step(section.context, item, f"{path}[{i}]") for i, item in enumerate(node.items)]
    return tuple(step for step in steps if step is not None)


def _read_step(context: _Context, node: _Node, path: str) -> Step | None:
    todo = "write `- send: 'PING\\r\\n'` or `- expect: '^\\+PONG'`"
    section = _open(context, node, path, "a mapping with `send` or `expect`", todo)
    if section is None:
        return None
    section.allow(_STEP_KEYS)
    fields = section.map.fields
    if "send" in fields and "expect" in fields:
        context.add(section.map.at, path, "a step either sends or expects, not both; make it two"
                    " steps")
        return None
    if "send" not in fields and "expect" not in fields:
        context.add(section.map.at, path, "missing `send` or `expect`; add the bytes to send as"
                    " `send:` or a regular expression to wait for as `expect:`")
        return None
    timeout = section.duration("timeout", _STEP_TIMEOUT)
    if "send" in fields:
        if "timeout" in fields:
            context.add(fields["timeout"].key_at, path, "`timeout` belongs to `expect` steps;"
                        " remove it, a send does not wait")
        return Step(send=_bytes(section, "send", allow_empty=False))
    expect = _regex(section, "expect")
    if expect is not None and expect.search(b"") is not None:
        context.add(section.at("expect"), section.sub("expect"), f"{_show(expect.pattern.decode())}"
                    " matches no data at all, so the step would pass at once; make it match at"
                    " least one character")
    return Step(expect=expect, timeout=timeout)


def _bytes(section: _Section, key: str, *, allow_empty: bool) -> bytes | None:
    node, path = section.get(key), section.sub(key)
    if node is None:
        return None
    text = _string(section.context, node, path, _BYTES_TODO)
    if text is None:
        return None
    try:
        data = decode_escapes(text)
    except ValueError as err:
        section.context.add(node.at, path, str(err))
        return None
    if not data and not allow_empty:
        section.context.add(node.at, path, "nothing to send; write at least one byte")
        return None
    if len(data) > MAX_SEND:
        section.context.add(node.at, path, f"{len(data)} bytes are too many; send at most"
                            f" {MAX_SEND} bytes")
        return None
    return data


def _regex(section: _Section, key: str) -> re.Pattern[bytes] | None:
    """The regular expression at `key`, over bytes (what a peer sends), `^`/`$` at lines."""
    source = _regex_source(section, key)
    try:
        return None if source is None else re.compile(source.encode(), re.MULTILINE)
    except re.error as err:
        _bad_regex(section, key, source or "", err)
        return None


def _text_regex(section: _Section, key: str) -> re.Pattern[str] | None:
    """The regular expression at `key`, over text (DNS records)."""
    source = _regex_source(section, key)
    try:
        return None if source is None else re.compile(source)
    except re.error as err:
        _bad_regex(section, key, source or "", err)
        return None


def _regex_source(section: _Section, key: str) -> str | None:
    node = section.get(key)
    return None if node is None else _string(section.context, node, section.sub(key),
                                             _REGEX_TODO)


def _bad_regex(section: _Section, key: str, source: str, err: re.error) -> None:
    section.context.add(section.at(key), section.sub(key), f"{_show(source)} is not a valid"
                        f" regular expression: {err.msg} at position {err.pos}; fix it (Python"
                        " `re` syntax)")


def _read_udp_probe(probes: _Section) -> ProbeSpec | None:
    todo = "write one such as `udp: {port: 7, payload: 'ping'}`"
    section = probes.section("udp", "a mapping", todo)
    if section is None:
        return None
    before = len(section.context.problems)
    section.allow(_UDP_KEYS)
    port = _probe_port(section, "add the UDP port to send to, such as `port: 7`")
    section.require("payload", "add the bytes to send, such as `payload: 'ping\\n'`")
    payload = _bytes(section, "payload", allow_empty=True)
    expect = _regex(section, "expect")
    if port is None or payload is None or len(section.context.problems) > before:
        return None
    return ProbeSpec(ProbeKind.UDP, port, udp=UdpOptions(payload, expect))


def _read_dns_probe(probes: _Section) -> ProbeSpec | None:
    todo = "write one such as `dns: {query: {name: example.com, type: A}}`"
    section = probes.section("dns", "a mapping", todo)
    if section is None:
        return None
    before = len(section.context.problems)
    section.allow(_DNS_KEYS)
    port = _probe_port(section, "", default=DEFAULTS.dns_probe_port)
    query = _read_query(section)
    rcodes = _read_rcodes(section)
    contains_node = section.get("answer_contains")
    contains = None if contains_node is None else _string(
        section.context, contains_node, section.sub("answer_contains"),
        "write a record's data as a string, such as \"198.18.0.5\"")
    matches = _text_regex(section, "answer_matches")
    if port is None or query is None or len(section.context.problems) > before:
        return None
    name, rdtype, recursion = query
    return ProbeSpec(ProbeKind.DNS, port, dns=DnsOptions(name, rdtype, recursion, rcodes,
                                                         contains, matches))


def _read_query(section: _Section) -> tuple[str, str, bool] | None:
    todo = "add the question, such as `query: {name: example.com, type: A}`"
    node = section.require("query", todo)
    if node is None:
        return None
    query = _open(section.context, node, section.sub("query"), "a mapping with `name` and"
                  " `type`", "write one such as `query: {name: example.com, type: A}`")
    if query is None:
        return None
    query.allow(_QUERY_KEYS)
    name = _query_name(query)
    rdtype = _query_type(query)
    recursion = _flag(query, "recursion_desired", default=True)
    if name is None or rdtype is None or recursion is None:
        return None
    return name, rdtype, recursion


def _query_name(query: _Section) -> str | None:
    node = query.require("name", "add the name to ask for, such as `name: example.com`")
    text = None if node is None else _string(query.context, node, query.sub("name"),
                                             "write a DNS name")
    if node is None or text is None:
        return None
    problem = ""
    if not text:
        problem = "the name is empty; write one such as example.com, or `.` for the root"
    elif any(char.isspace() or not char.isprintable() for char in text):
        problem = f"{_show(text)} contains a space or control character; remove it"
    else:
        import dns.exception  # noqa: PLC0415  # dnspython only for a file with a DNS probe
        import dns.name  # noqa: PLC0415

        try:
            dns.name.from_text(text)
        except (dns.exception.DNSException, ValueError) as err:
            why = str(err).rstrip(".")
            problem = (f"{_show(text)} is not a valid DNS name ({why[:1].lower() + why[1:]});"
                       " write one such as www.example.com")
    if problem:
        query.context.add(node.at, query.sub("name"), problem)
        return None
    return text


_COMMON_TYPES: Final = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA")


def _query_type(query: _Section) -> str | None:
    node = query.get("type")
    if node is None:
        return "A"
    text = _string(query.context, node, query.sub("type"), "write a record type such as A")
    if text is None:
        return None
    import dns.exception  # noqa: PLC0415  # dnspython only for a file with a DNS probe
    import dns.rdatatype  # noqa: PLC0415

    try:
        rdtype = dns.rdatatype.from_text(text.upper())
    except (dns.exception.DNSException, ValueError):
        guess = _guess(text.upper(), _COMMON_TYPES)
        todo = f"did you mean `{guess}`?" if guess else f"use one such as {_choices(_COMMON_TYPES)}"
        query.context.add(node.at, query.sub("type"), f"{_show(text)} is not a DNS record type;"
                          f" {todo}")
        return None
    if dns.rdatatype.is_metatype(rdtype) and rdtype != dns.rdatatype.ANY:
        query.context.add(node.at, query.sub("type"), f"{_show(text)} cannot be asked in one UDP"
                          f" query; use a record type such as {_choices(_COMMON_TYPES)}")
        return None
    return dns.rdatatype.to_text(rdtype)


def _read_rcodes(section: _Section) -> tuple[str, ...]:
    node, path = section.get("expect_rcode"), section.sub("expect_rcode")
    if node is None:
        return ("NOERROR",)
    items = [(node, path)]
    if isinstance(node, _Seq):
        if not 1 <= len(node.items) <= _RCODES_MAX:
            count = f"{len(node.items)} rcodes are too many" if node.items else "no rcodes"
            section.context.add(node.at, path, f"{count}; list 1 to {_RCODES_MAX}, such as"
                                " [NOERROR, NXDOMAIN]")
            return ()
        items = [(item, f"{path}[{i}]") for i, item in enumerate(node.items)]
    import dns.exception  # noqa: PLC0415  # dnspython only for a file with a DNS probe
    import dns.rcode  # noqa: PLC0415

    out = []
    for item, where in items:
        text = _string(section.context, item, where, "write an rcode such as NOERROR")
        try:
            out.append(dns.rcode.to_text(dns.rcode.from_text((text or "").upper())))
        except (dns.exception.DNSException, ValueError):
            if text is not None:
                section.context.add(item.at, where, f"{_show(text)} is not a DNS rcode; use one"
                                    " such as NOERROR, NXDOMAIN, SERVFAIL or REFUSED")
    return tuple(dict.fromkeys(out))


def _read_icmp_probe(probes: _Section) -> ProbeSpec | None:
    todo = "write `icmp: {}` (icmp probes have no options yet)"
    section = probes.section("icmp", "an empty mapping", todo)
    if section is None:
        return None
    section.allow(())
    return ProbeSpec(ProbeKind.ICMP) if not section.map.fields else None


def _read_dns_servers(top: _Section) -> tuple[str, ...]:
    """IP literals of name servers; empty means the system's resolver configuration."""
    node, path = top.get("dns_servers"), "dns_servers"
    if node is None:
        return ()
    todo = "write a list of name server addresses, such as [127.0.0.53]"
    if not isinstance(node, _Seq) or len(node.items) > _DNS_SERVERS_MAX:
        _wrong_type(top.context, node, path, f"a list of at most {_DNS_SERVERS_MAX} addresses",
                    todo)
        return ()
    servers = []
    for index, item in enumerate(node.items):
        text = _string(top.context, item, f"{path}[{index}]", todo)
        try:
            servers.append(str(ipaddress.ip_address(text or "")))
        except ValueError:
            if text is not None:
                top.context.add(item.at, f"{path}[{index}]", f"{_show(text)} is not an IP "
                                "address; name servers are given by address")
    return tuple(servers)


def _read_maintenance(top: _Section, targets: Sequence[TargetConfig]
                      ) -> tuple[MaintenanceWindow, ...]:
    node, path = top.get("maintenance"), "maintenance"
    if node is None:
        return ()
    if not isinstance(node, _Seq):
        _wrong_type(top.context, node, path, "a list", "write `- name: ...` items")
        return ()
    names = {t.name for t in targets}
    found = [_read_window(top.context, item, f"{path}[{i}]", names)
             for i, item in enumerate(node.items)]
    return tuple(w for w in found if w is not None)


def _read_window(context: _Context, node: _Node, path: str, names: set[str]
                 ) -> MaintenanceWindow | None:
    todo = "write `name:`, `start:`, `end:` and `targets:` or `match_labels:`"
    section = _open(context, node, path, "a mapping", todo)
    if section is None:
        return None
    section.allow(_MAINTENANCE_KEYS)
    name_node = section.require("name", "add a name, such as `name: rollout-42`")
    name = None if name_node is None else _string(context, name_node, section.sub("name"), todo)
    start = _timestamp(section, "start")
    end = _timestamp(section, "end")
    selected = _window_targets(section, names)
    match = _read_labels_at(section, "match_labels")
    if not selected and not match and "targets" not in section.map.fields:
        context.add(section.map.at, path, "selects no target; add `targets:` or `match_labels:`")
        return None
    if name is None or start is None or end is None:
        return None
    if end <= start:
        shown = (datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat() for t in (end, start))
        context.add(section.at("end"), section.sub("end"),
                    "{} is not after start {}; set end later than start".format(*shown))
        return None
    return MaintenanceWindow(name, start, end, selected, tuple(sorted(match.items())))


def _timestamp(section: _Section, key: str) -> float | None:
    node = section.require(key, f"add `{key}:` as a time with a zone, such as "
                           "2026-11-23T10:00:00Z")
    if node is None:
        return None
    value = node.value if isinstance(node, _Leaf) else None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        section.context.add(node.at, section.sub(key), "expected a date and time with a zone; "
                            "write one such as 2026-11-23T10:00:00Z or 2026-11-23T11:00:00+01:00")
        return None
    return value.timestamp()


def _window_targets(section: _Section, names: set[str]) -> tuple[str, ...]:
    node = section.get("targets")
    if node is None:
        return ()
    path = section.sub("targets")
    if not isinstance(node, _Seq):
        _wrong_type(section.context, node, path, "a list of target names", "write [db1, db2]")
        return ()
    out = []
    for index, item in enumerate(node.items):
        name = _string(section.context, item, f"{path}[{index}]", "write a target name")
        if name is not None and name not in names:
            section.context.add(item.at, f"{path}[{index}]", f"no target is named {_show(name)};"
                                " use the `name` of a target in this file")
        elif name is not None:
            out.append(name)
    return tuple(out)


def _read_labels_at(section: _Section, key: str) -> dict[str, str]:
    """A mapping of label names to strings at `key` (empty if absent)."""
    node = section.get(key)
    if node is None:
        return {}
    inner = _open(section.context, node, section.sub(key), "a mapping of label names to strings")
    if inner is None:
        return {}
    out = {}
    for name, entry in inner.map.fields.items():
        value = _label_value(section.context, entry.node, inner.sub(name))
        if value is not None:
            out[name] = value
    return out


_SHARD_TOTAL: Final = _Range(1, 1000)


def _read_shard(top: _Section) -> Shard:
    """`shard: {index: i, total: n}`: this instance's share of the targets (hashmod of names)."""
    section = top.section("shard", "a mapping with `index` and `total`")
    if section is None:
        return Shard()
    section.allow(("index", "total"))
    total = section.integer("total", _SHARD_TOTAL)
    todo = "add `total:`, the number of instances sharing the targets"
    if section.require("total", todo) is None or total is None:
        return Shard()
    todo = f"add `index:`, this instance's number from 0 to {total - 1}"
    if section.require("index", todo) is None:
        return Shard()
    index = section.integer("index", _Range(0, total - 1))
    return Shard(0 if index is None else index, total)


_REFRESH: Final = _Range(1.0, 3600.0)
_FILE_SD_TODO: Final = "write a list of `{targets: [host, ...], labels: {name: value}}` groups"


def _read_target_files(top: _Section, defaults: _Settings, static: Sequence[TargetConfig]
                       ) -> tuple[TargetFiles, ...]:
    node, path = top.get("target_files"), "target_files"
    if node is None:
        return ()
    if not isinstance(node, _Seq):
        _wrong_type(top.context, node, path, "a list", "write `- files: [...]` items")
        return ()
    groups = [_read_file_group(top.context, item, f"{path}[{i}]", defaults)
              for i, item in enumerate(node.items)]
    return tuple(g for g in groups if g is not None)


def _read_file_group(context: _Context, node: _Node, path: str, defaults: _Settings
                     ) -> TargetFiles | None:
    todo = "write `files:` (glob patterns) and `probes:`"
    section = _open(context, node, path, "a mapping", todo)
    if section is None:
        return None
    section.allow(_TARGET_FILES_KEYS)
    patterns = _read_patterns(section)
    probes = _read_probes(section, None)
    refresh = section.duration("refresh", _REFRESH)
    own = _read_settings(section)
    _check_timeout(context, own, defaults, path)
    _check_flap(context, own, defaults, path)
    if not patterns or probes is None:
        return None
    template = _make_target("", "", probes, own.over(defaults), node.at)
    return TargetFiles(patterns, template, _or(refresh, 30.0))


def _read_patterns(section: _Section) -> tuple[str, ...]:
    node = section.require("files", "add `files:`, glob patterns such as [targets/*.json]")
    if node is None:
        return ()
    path = section.sub("files")
    if not isinstance(node, _Seq) or not node.items:
        _wrong_type(section.context, node, path, "a non-empty list of glob patterns",
                    "write one such as [/etc/hostwatch/targets/*.yml]")
        return ()
    texts = [_string(section.context, item, f"{path}[{i}]", "write a glob pattern")
             for i, item in enumerate(node.items)]
    base = os.path.dirname(os.path.abspath(section.context.source))
    return tuple(os.path.join(base, t) for t in texts if t)


def parse_target_file(text: str, source: str, group: TargetFiles,
                      taken: Mapping[str, str]) -> tuple[TargetConfig, ...]:
    """The targets of one file_sd file (JSON or YAML) for `group`; ConfigError with
    file:line:column for every problem. `taken` maps names already in use to where."""
    context = _Context(source)
    root = _compose(context, text)
    found: list[TargetConfig] = []
    if root is not None and not isinstance(root, _Seq):
        _wrong_type(context, root, "", "a list of target groups", _FILE_SD_TODO)
    elif root is not None:
        for index, item in enumerate(root.items):
            found.extend(_read_sd_group(context, item, f"[{index}]", group, taken))
    if context.problems:
        raise ConfigError(sorted(context.problems, key=_position))
    return tuple(found)


def _read_sd_group(context: _Context, node: _Node, path: str, group: TargetFiles,
                   taken: Mapping[str, str]) -> list[TargetConfig]:
    section = _open(context, node, path, "a mapping with `targets`", _FILE_SD_TODO)
    if section is None:
        return []
    section.allow(("targets", "labels"))
    labels = {k: v for k, v in _read_sd_labels(section).items() if not k.startswith("__")}
    merged = tuple(sorted({**dict(group.template.labels), **labels}.items()))
    hosts = section.require("targets", "add `targets: [host, ...]`")
    if hosts is None:
        return []
    if not isinstance(hosts, _Seq):
        _wrong_type(context, hosts, section.sub("targets"), "a list of hosts", _FILE_SD_TODO)
        return []
    out = []
    for index, item in enumerate(hosts.items):
        target = _sd_target(context, item, f"{section.sub('targets')}[{index}]", group,
                            labels=merged, taken=taken)
        if target is not None:
            out.append(target)
    return out


def _read_sd_labels(section: _Section) -> dict[str, str]:
    """Labels of a file_sd group; `__meta_*`-style names are allowed and dropped."""
    node = section.get("labels")
    if node is None:
        return {}
    inner = _open(section.context, node, section.sub("labels"), "a mapping of label names")
    if inner is None:
        return {}
    out = {}
    for name, entry in inner.map.fields.items():
        problem = "" if name.startswith("__") else _label_name_problem(name)
        if problem:
            section.context.add(entry.key_at, inner.path, problem)
            continue
        value = _label_value(section.context, entry.node, inner.sub(name))
        if value is not None:
            out[name] = value
    return out


def _sd_target(context: _Context, node: _Node, path: str, group: TargetFiles, *,
               labels: tuple[tuple[str, str], ...], taken: Mapping[str, str]
               ) -> TargetConfig | None:
    text = _string(context, node, path, "write the host as a string")
    if text is None:
        return None
    host, port = _split_host_port(text)
    try:
        # `[::1]:443` and a bare `::1`: the IPv6 host (and the port) are checked instead
        if not text.startswith("[") and not _is_ip_literal(text):
            _check_name(text)
        host = _normalise_host(host)
    except ValueError as err:
        context.add(node.at, path, str(err))
        return None
    where = taken.get(text)
    if where is not None:
        context.add(node.at, path, f"{_show(text)} is already a target ({where}); a name is "
                    "probed once, remove one of them")
        return None
    probes = tuple(ProbeSpec(p.kind, port) if p.kind is ProbeKind.TCP and port else p
                   for p in group.template.probes)
    return dataclasses.replace(group.template, name=text, host=host, probes=probes,
                               labels=labels, source=node.at)


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6]:port` as Prometheus writes targets; the port goes to tcp."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        return text, None
    if port_text.isdigit() and 1 <= int(port_text) <= 65535:
        return host, int(port_text)
    return text, None
