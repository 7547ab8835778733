"""The daemon: ordered startup, reload (validate, then swap), signals, ordered shutdown.

This is the only module that knows every subsystem. A failed probe never reaches here; an
exception that escapes a callback or job, or a MemoryError anywhere, is fatal: it is logged at
CRIT and `run` returns 70 so systemd's Restart=on-failure starts a fresh process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from hostwatch import __version__
from hostwatch.api import targets_document
from hostwatch.config import ConfigError, default_config, load_config_async
from hostwatch.discovery import Fingerprint, discover, fingerprint, refresh_interval
from hostwatch.events import LOG_CRIT, LOG_ERR, EventKind, Events, SinkHandler
from hostwatch.exposition.client import Scraper
from hostwatch.heap import return_large_buffers
from hostwatch.journal import EventSink, JournalSink, StderrSink, stderr_is_journal
from hostwatch.lifecycle import Notifier, activated_socket, install_test_stall
from hostwatch.model import DEFAULTS, Config, ProbeKind
from hostwatch.numbers import DaemonView, ReloadStatus
from hostwatch.probes.base import Prober
from hostwatch.probes.icmp import IcmpPermissionError, IcmpProber
from hostwatch.probes.registry import new_probers
from hostwatch.resolve import Resolution, Resolver
from hostwatch.scheduler import SlotScheduler
from hostwatch.state import Health, Transition
from hostwatch.status_page import render_status_page
from hostwatch.watch import Runner, Watch, Watches
from hostwatch.web import ListenAddress, WebServer
from hostwatch.webconfig import load_web_config

__all__ = ["EXIT_FATAL", "Daemon", "Options", "run"]

log = logging.getLogger("hostwatch")
EXIT_OK, EXIT_STARTUP, EXIT_FATAL = 0, 1, 70


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line decided."""

    config_file: str | None  # None: the default path, or the embedded default if it is absent
    listen: ListenAddress
    log_level: str = "info"
    log_target: str = "auto"  # auto | journal | stderr
    web_config_file: str | None = None  # exporter-toolkit format: TLS and basic auth


class FatalError(Exception):
    """Wraps an exception that must end the process."""


def make_sink(target: str) -> EventSink:
    if target == "journal" or (target == "auto" and stderr_is_journal()):
        return JournalSink()
    return StderrSink()


def setup_logging(sink: EventSink, level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = SinkHandler(sink)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


class Daemon:
    """Holds the live config and every subsystem."""

    def __init__(self, options: Options, sink: EventSink) -> None:
        self.options = options
        self.events = Events(sink)
        self.notifier = Notifier()
        self.config: Config | None = None
        self.watches = Watches([])
        self.reload_status = ReloadStatus()
        self.probers: dict[ProbeKind, Prober] = new_probers()  # tcp, udp, dns; icmp on demand
        self.resolver = Resolver(DEFAULTS.dns_refresh, self._on_address_change)
        self.runner = Runner(self.probers, self.resolver, self._on_transition)
        self.scheduler = SlotScheduler(self.runner.fire, on_error=self._on_job_error)
        self.view = DaemonView(
            watches=lambda: self.watches, scheduler=self.scheduler.stats,
            skipped_in_flight=lambda: self.runner.skipped_in_flight,
            in_flight=lambda: {k.value: p.in_flight() for k, p in self.probers.items()},
            journal=sink.stats, reload=self.reload_status,
            slots=lambda: self.scheduler.slot_count)
        daemon = os.getpid()
        self.scraper = Scraper(self.view, lambda: self.watches,
                               quiet=self.scheduler.between_slots,
                               others=lambda: _process_text(daemon))
        self.web = WebServer(self.scraper, self.reload, lambda: self.ready,
                             lambda: targets_document(self.watches),
                             lambda query: render_status_page(self.watches, query))
        self.ready = False
        self.stop_event = asyncio.Event()
        self.fatal: BaseException | None = None
        self._reload_lock = asyncio.Lock()
        self._static: Config = Config(targets=())
        self._fingerprint: Fingerprint = ()
        self._listen_port = options.listen.port

    # --- events from subsystems -------------------------------------------------------------
    def _on_transition(self, watch: Watch, transition: Transition) -> None:
        window = watch.active_maintenance(transition.at)
        self.events.transition(watch.target.name, watch.spec.kind.value, transition,
                               None if window is None else window.name)

    def _on_address_change(self, key: tuple[str, Any], old: Resolution,
                           new: Resolution) -> None:
        host, protocol = key
        now = new.ip or f"nothing ({new.reason.value if new.reason else 'dns'}: {new.detail})"
        before = old.ip or f"nothing ({old.detail})"
        self.events.lifecycle(
            EventKind.ADDRESS_CHANGED, f"{host} ({protocol.value}) now resolves to {now}, "
            f"was {before}", fields={"HOST": host, "IP": new.ip or "", "PREVIOUS_IP": old.ip or "",
                                     "IP_PROTOCOL": protocol.value,
                                     "REASON": new.reason.value if new.reason else "ok"})

    def _on_job_error(self, exc: BaseException) -> None:
        self.die(exc)

    def die(self, exc: BaseException) -> None:
        """Record a fatal error and stop; `run` returns EXIT_FATAL."""
        if self.fatal is None:
            self.fatal = exc
        self.stop_event.set()

    def loop_exception_handler(self, loop: asyncio.AbstractEventLoop,
                               context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None or isinstance(exc, OSError):
            # A transport error a client or the network caused (a failed TLS handshake, a
            # reset connection) is never fatal; everything else escaping a callback is.
            log.warning("event loop: %s: %s", context.get("message"), exc)
            return
        self.die(exc)

    # --- config -----------------------------------------------------------------------------
    async def _read_config(self) -> Config:
        """The config file (or the embedded default) with the discovered targets added."""
        path = self.options.config_file
        if path is None and not os.path.exists(DEFAULTS.config_file):
            static = default_config(self.options.listen.host, self._listen_port)
        else:
            static = await load_config_async(path or DEFAULTS.config_file, self._static)
        fingerprint_now = fingerprint(static)
        config = discover(static)
        self._static, self._fingerprint = static, fingerprint_now
        return config

    async def discovery_loop(self) -> None:
        """Poll the target files; apply a change like a reload (validate, then swap)."""
        while True:
            await asyncio.sleep(refresh_interval(self._static) or 30.0)
            if self._static.target_files and fingerprint(self._static) != self._fingerprint:
                await self._rediscover()

    async def _rediscover(self) -> None:
        async with self._reload_lock:
            static = self._static
            self._fingerprint = fingerprint(static)
            try:
                await self.apply(discover(static))
            except (ConfigError, IcmpPermissionError, OSError) as err:
                self.reload_status.successful = False
                self.events.lifecycle(EventKind.CONFIG_FAILED, "target files rejected, keeping "
                                      f"the running targets: {err}", LOG_ERR)

    def _ensure_icmp(self, config: Config) -> None:
        needs = any(p.kind is ProbeKind.ICMP for t in config.targets for p in t.probes)
        if needs and ProbeKind.ICMP not in self.probers:
            icmp = IcmpProber.open(config.icmp.mode, config.icmp.payload_size)
            self.probers[ProbeKind.ICMP] = icmp
            self.view.icmp_sockets = icmp.describe()
            log.info("ICMP sockets: %s", ", ".join(f"{k} {v}" for k, v in
                                                   sorted(icmp.describe().items())))

    async def apply(self, config: Config) -> None:
        """Swap to a validated config: unchanged watches keep state, counters and phase."""
        self._ensure_icmp(config)
        self.resolver.set_refresh(config.dns_refresh)
        self.resolver.set_servers(config.dns_servers)
        watches = Watches.build(config, self.watches)
        # Names only (an address literal is parsed once per watch, when the watch is made),
        # and only the ones this instance probes (a shard leaves the others alone).
        await self.resolver.update({(w.target.host, w.protocol) for w in watches
                                    if w.fixed is None})
        self.scheduler.apply(watches)
        previous, self.watches = self.watches, watches
        watches.retire(previous)  # the rows of removed targets are free again
        self.scraper.sync(watches)  # the renderer learns the new rows before any scrape
        self.config = config
        self.reload_status.successful = True
        self.reload_status.success_timestamp = time.time()
        self.reload_status.source = config.source
        self.events.lifecycle(EventKind.CONFIG_LOADED,
                              f"configuration loaded from {config.source}: "
                              f"{len(config.targets)} targets, {len(watches)} probes",
                              fields={"CONFIG_FILE": config.source,
                                      "TARGETS": str(len(config.targets))})

    async def reload(self) -> tuple[bool, str]:
        """Validate the config file completely, then swap; on any error keep the old one."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                config = await self._read_config()
                await self.apply(config)
            except (ConfigError, IcmpPermissionError, OSError) as err:
                self.reload_status.successful = False
                message = f"reload failed, keeping the running configuration: {err}"
                self.events.lifecycle(EventKind.CONFIG_FAILED, message, LOG_ERR)
                return False, message
            finally:
                self.notifier.ready(self.status_line())
            return True, f"reloaded {config.source}"

    def status_line(self) -> str:
        counts = dict.fromkeys(Health, 0)
        for watch in self.watches:
            counts[watch.state.health] += 1
        return (f"watching {len(self.watches)} probes: {counts[Health.UP]} up, "
                f"{counts[Health.DOWN]} down, {counts[Health.UNKNOWN]} unknown")

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen, load the first config, start probing; raises on any startup failure."""
        if self.options.web_config_file is not None:
            self.web.secure(load_web_config(self.options.web_config_file))
        await self.scraper.start()  # the renderer process starts meanwhile
        activated = activated_socket()  # socket activation (hostwatch.socket), if any
        if activated is None:
            addresses = await self.web.start(self.options.listen)
        else:
            await self.web.start_on_socket(activated)
            addresses = [activated.getsockname()[:2]]
        self._listen_port = addresses[0][1]
        config = await self._read_config()
        await self.apply(config)
        self.scheduler.start()
        self.resolver.start()
        self.notifier.start_watchdog()
        self.ready = True
        listening = ", ".join(str(ListenAddress(h, p)) for h, p in addresses)
        self.notifier.ready(self.status_line())
        self.events.lifecycle(EventKind.STARTED,
                              f"hostwatch {__version__} started; metrics on {listening}",
                              fields={"LISTEN": listening, "VERSION": __version__})

    async def status_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            self.notifier.status(self.status_line())

    async def stop(self, announce: bool = True) -> None:
        """Stop every subsystem (also after a partial start); in-flight probes are abandoned."""
        self.notifier.stopping()
        self.ready = False
        if announce:
            reason = "fatal error" if self.fatal else "signal"
            self.events.lifecycle(EventKind.STOPPING, f"hostwatch stopping ({reason})")
        self.scheduler.shutdown()
        await self.web.close()
        await self.scraper.close()
        for prober in self.probers.values():
            await prober.close()
        await self.resolver.close()
        await self.notifier.close()


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(daemon.loop_exception_handler)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stop_event.set)
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    install_test_stall(loop)  # only with HOSTWATCH_TEST_STALL_ON_SIGNAL=1 (tests)
    background = [loop.create_task(daemon.status_loop()),
                  loop.create_task(daemon.discovery_loop())]
    try:
        await daemon.stop_event.wait()
    finally:
        for task in background:
            task.cancel()
        await daemon.stop()
    return EXIT_OK


def _report_fatal(daemon: Daemon, exc: BaseException) -> None:
    name = type(exc).__name__
    daemon.events.lifecycle(EventKind.FATAL, f"fatal error, exiting: {name}: {exc}", LOG_CRIT)
    log.critical("fatal error", exc_info=exc)


async def run(options: Options) -> int:
    """Run until SIGTERM/SIGINT (0), a startup failure (1) or a fatal error (70)."""
    sink = make_sink(options.log_target)
    setup_logging(sink, options.log_level)
    daemon = Daemon(options, sink)
    code = await _start_and_serve(daemon, options)
    if daemon.fatal is not None:
        _report_fatal(daemon, daemon.fatal)
        code = EXIT_FATAL
    await sink.close()
    return code


async def _start_and_serve(daemon: Daemon, options: Options) -> int:
    try:
        await daemon.start()
    except ConfigError as err:
        daemon.events.lifecycle(EventKind.CONFIG_FAILED, f"invalid configuration:\n{err}",
                                LOG_ERR)
    except (IcmpPermissionError, OSError) as err:
        # One line for a person, no traceback: the hint says what to do.
        log.error("cannot start: %s", _startup_hint(err, options))  # noqa: TRY400
    else:
        return await _serve(daemon)
    await daemon.stop(announce=False)
    return EXIT_STARTUP


def _startup_hint(err: BaseException, options: Options) -> str:
    if isinstance(err, OSError) and err.errno in (98, 99, 13):
        return (f"cannot listen on {options.listen}: {err.strerror}; choose another address "
                "with --web.listen-address")
    return str(err)


def _process_text(pid: int) -> bytes:
    """process_* of the daemon, for /metrics rendered in the event loop (the fallback)."""
    from hostwatch.metrics import process_text  # noqa: PLC0415 - prometheus-client, if needed

    return process_text(pid)


def main_sync(options: Options) -> int:
    return_large_buffers()  # before the first large buffer (hostwatch.heap)
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        sys.stderr.flush()
