"""A real systemd-journald in a private mount namespace, read back with the real journalctl.

Layout inside the private mount namespace (nothing of it is visible outside):

    /run/systemd        tmpfs  -> journal/socket, stdout, dev-log ... and our journald.conf.d
    /run/log            tmpfs  -> journal/ is a bind mount of `<directory>/journal` (seen outside)
    /var/log/journal    tmpfs  (empty; with Storage=volatile journald never writes there anyway)

Standalone (no systemd PID 1) journald writes to the *runtime* journal, /run/log/journal/<machine
id>/system.journal, until someone asks for a flush to /var; we pin that with Storage=volatile, so
the file lands in `<directory>/journal` and `journalctl --directory=` reads it while it is written
(the file is shared memory-mapped: an entry is readable as soon as journald has processed the
datagram, no sync or flush needed).

The namespace is a *slave* of the machine's: mounts made later outside (like `ip netns add`'s
namespace files under /run/netns) propagate in, ours never propagate out. That is what lets
`journald.wrap(lab.prober_cmd(argv))` find a network namespace created after this journald.

Never run systemd-journald with an argument: its only argument is a journal *namespace* name
(`systemd-journald --version` starts an instance named "--version" on the machine's real paths).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .netns import ensure_netns_run_dir
from .procs import LabError, clean_env, kill_pid, pid_alive, process_state, run, stop_process

JOURNALD_CANDIDATES = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
SOCKET_PATH = "/run/systemd/journal/socket"
OWNER_ENV = "HOSTWATCH_LAB_JOURNALD_OWNER"
CONF_DROPIN = "/run/systemd/journald.conf.d/zz-hostwatch-lab.conf"

# Settings for a test journald: nothing leaves it (no syslog, kmsg, console, wall), nothing from
# the machine comes in (no /dev/kmsg), no rate limit (tests count entries), volatile storage.
DEFAULT_CONFIG: Mapping[str, str] = {
    "Storage": "volatile",
    "ReadKMsg": "no",
    "ForwardToSyslog": "no",
    "ForwardToKMsg": "no",
    "ForwardToConsole": "no",
    "ForwardToWall": "no",
    "RateLimitIntervalSec": "0",
    "RuntimeMaxUse": "64M",
    "MaxLevelStore": "debug",
}

Entry = dict[str, object]
_FIELD_RE = re.compile(r"^_{0,2}[A-Z0-9][A-Z0-9_]*$")


def find_journald() -> str | None:
    """Path of the systemd-journald binary, or None."""
    for path in JOURNALD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def field_text(entry: Mapping[str, object], name: str) -> str | None:
    """A field of a `journalctl -o json` entry as text (binary fields come as byte lists)."""
    value = entry.get(name)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list):  # a field given more than once: the first value
        return field_text({name: value[0]}, name) if value else None
    return value if isinstance(value, str) else None


def native_datagram(fields: Mapping[str, str]) -> bytes:
    """Encode fields in journald's native protocol (values with newlines in the binary form)."""
    out = bytearray()
    for key, value in fields.items():
        if not _FIELD_RE.match(key) or key.startswith("_"):
            raise ValueError(f"journal field names are UPPERCASE ASCII, not {key!r}")
        data = value.encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class PrivateJournald:
    """systemd-journald in its own mount namespace; see the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        *,
        config: Mapping[str, str] | None = None,
        log_level: str = "info",
        start_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.journal_dir = self.directory / "journal"
        self.log_path = self.directory / "journald.log"
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._holder: subprocess.Popen[bytes] | None = None
        self._journald: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(exist_ok=True)
        try:
            self._make_namespace()
            self.start()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    # -- namespace and process ---------------------------------------------------------------

    @property
    def holder_pid(self) -> int:
        """A process that lives in the private mount namespace as long as this object does."""
        if self._holder is None:
            raise LabError("the journald mount namespace is gone")
        return self._holder.pid

    @property
    def pid(self) -> int:
        """The systemd-journald process."""
        if self._journald is None:
            raise LabError("journald is not running")
        return self._journald.pid

    @property
    def socket_path(self) -> str:
        """The native socket as reachable from *outside* the namespace (via /proc/PID/root)."""
        return f"/proc/{self.holder_pid}/root{SOCKET_PATH}"

    def _make_namespace(self) -> None:
        if find_journald() is None:
            raise LabError(f"systemd-journald not found at {' or '.join(JOURNALD_CANDIDATES)}")
        ensure_netns_run_dir()  # before the namespace exists, so later netns files propagate in
        for mountpoint in ("/run/systemd", "/run/log"):
            # Mount points must exist; an empty directory is all a missing one costs outside.
            Path(mountpoint).mkdir(mode=0o755, exist_ok=True)
        with open(self.directory / "holder.log", "wb") as log:
            self._holder = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--",
                 "unshare", "--mount", "--propagation", "slave", "--", "sleep", "infinity"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=clean_env({OWNER_ENV: str(os.getpid())}),
            )  # fmt: skip
        deadline = time.monotonic() + self.start_timeout
        while not self._holder_ready():
            if self._holder.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    "mount namespace holder did not start: "
                    + (self.directory / "holder.log").read_text(errors="replace")
                )
            time.sleep(0.01)
        self._ns_run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "hwlab", "/run/systemd"])
        self._ns_run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=4m", "hwlab", "/run/log"])
        self._ns_run(["mkdir", "-p", "/run/log/journal", str(Path(CONF_DROPIN).parent)])
        self._ns_run(["mount", "--bind", str(self.journal_dir), "/run/log/journal"])
        if Path("/var/log/journal").is_dir():
            self._ns_run(
                ["mount", "-t", "tmpfs", "-o", "mode=0755,size=4m", "hwlab", "/var/log/journal"]
            )
        conf = self.directory / "journald.conf"
        conf.write_text("[Journal]\n" + "".join(f"{k}={v}\n" for k, v in self.config.items()))
        self._ns_run(["cp", str(conf), CONF_DROPIN])

    def _holder_ready(self) -> bool:
        assert self._holder is not None
        pid = self._holder.pid
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            mnt = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return False
        # "sleep" means unshare has already made the namespace and set its propagation.
        return comm == "sleep" and mnt != os.readlink("/proc/self/ns/mnt")

    def _ns_run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        # Belt and braces: never mount anything in the machine's own mount namespace.
        if os.readlink(f"/proc/{self.holder_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            raise LabError("refusing to run a set-up command in the machine's mount namespace")
        # mount(8) would create /run/mount/utab on the shared disk: keep its book-keeping here.
        env = clean_env({"LIBMOUNT_UTAB": str(self.directory / "utab")})
        return run(["nsenter", "-t", str(self.holder_pid), "-m", "--", *argv], env=env)

    def start(self) -> None:
        """Start journald in the namespace (done by the constructor; again after stop())."""
        if self._journald is not None and self._journald.poll() is None:
            return
        binary = find_journald()
        assert binary is not None
        env = clean_env(
            {
                "SYSTEMD_LOG_TARGET": "console",  # its own messages to our log file, not kmsg
                "SYSTEMD_LOG_LEVEL": self.log_level,
                OWNER_ENV: str(os.getpid()),
            }
        )
        with open(self.log_path, "ab") as log:
            self._journald = subprocess.Popen(
                # No argument after the binary: it would be taken as a journal namespace name.
                ["setpriv", "--pdeathsig", "KILL", "--",
                 "nsenter", "-t", str(self.holder_pid), "-m", "--", binary],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        self._paused = False
        # Ready = an entry we send comes back through journalctl. The socket file may be a stale
        # one from before stop() (refused) until journald has bound it anew.
        deadline = time.monotonic() + self.start_timeout
        token = os.urandom(8).hex()
        while True:
            try:
                self.send("hostwatch lab: private journald ready", HWLAB_READY=token)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self._journald.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"journald did not start; its log:\n{self.log_text()}") from None
                time.sleep(0.01)
        self.wait_for(timeout=max(deadline - time.monotonic(), 1.0), HWLAB_READY=token)

    def stop(self) -> None:
        """Stop journald but keep the namespace: its socket stays, with nobody reading it."""
        if self._journald is not None:
            stop_process(self._journald)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP journald: its socket buffer fills and writers that block, block."""
        kill_pid(self.pid, signal.SIGSTOP)
        self._paused = True
        self._wait_state(lambda s: s == "T")

    def resume(self) -> None:
        """SIGCONT journald."""
        kill_pid(self.pid, signal.SIGCONT)
        self._paused = False
        self._wait_state(lambda s: s not in ("T", "t"))

    def _wait_state(self, ok: Callable[[str], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok(state := process_state(self.pid)):
            if time.monotonic() > deadline:
                raise LabError(f"journald {self.pid} stuck in state {state!r}")
            time.sleep(0.005)

    @property
    def paused(self) -> bool:
        return self._paused

    def log_text(self) -> str:
        """journald's own diagnostics (stderr), for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- using it ----------------------------------------------------------------------------

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run inside the private mount namespace (sees the private socket).

        Composes with NetLab: `journald.wrap(lab.prober_cmd(argv))`. The working directory is
        kept (entering a mount namespace would otherwise reset it to /).
        """
        return ["nsenter", "-t", str(self.holder_pid), "-m", f"--wd={os.getcwd()}", "--", *argv]

    def send(self, message: str, **fields: str) -> None:
        """Write one entry through the native protocol from this process (via socket_path)."""
        payload = native_datagram({"MESSAGE": message, **fields})
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(payload, self.socket_path)

    def entries(self, **match: str) -> list[Entry]:
        """All entries (oldest first) matching every FIELD=value given, via real journalctl."""
        for key in match:
            if not _FIELD_RE.match(key):
                raise ValueError(f"not a journal field name: {key!r}")
        argv = [
            "journalctl", f"--directory={self.journal_dir}", "--output=json", "--no-pager",
            "--all", *(f"{k}={v}" for k, v in match.items()),
        ]  # fmt: skip
        proc = run(argv, check=False)
        if proc.returncode != 0:
            raise LabError(f"journalctl failed ({proc.returncode}): {proc.stderr.strip()}")
        out: list[Entry] = []
        for line in proc.stdout.splitlines():
            if line.strip():
                entry = json.loads(line)
                assert isinstance(entry, dict)
                out.append(entry)
        return out

    def wait_for(
        self,
        predicate: Callable[[Entry], bool] | Mapping[str, str] | None = None,
        /,
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
        **match: str,
    ) -> Entry:
        """Poll entries(**match) until one satisfies `predicate` (a callable or more field
        matches); return the first such entry, or raise AssertionError listing what was seen."""
        check: Callable[[Entry], bool] | None = None
        if isinstance(predicate, Mapping):
            match = {**predicate, **match}
        elif predicate is not None:
            check = predicate
        deadline = time.monotonic() + timeout
        while True:
            seen = self.entries(**match)
            for entry in seen:
                if check is None or check(entry):
                    return entry
            if time.monotonic() > deadline:
                break
            time.sleep(interval)
        shown = "\n".join(_summary(e) for e in seen[-40:]) or "(none)"
        raise AssertionError(
            f"no journal entry matching {match or 'anything'}"
            f"{' and the predicate' if check else ''} within {timeout}s; "
            f"{len(seen)} entries matched the fields, last ones:\n{shown}"
        )

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop journald and the namespace holder; the directory stays for debugging."""
        if self._closed:
            return
        self._closed = True
        for proc in (self._journald, self._holder):
            if proc is not None:
                stop_process(proc)
        self._journald = self._holder = None

    def __enter__(self) -> PrivateJournald:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @classmethod
    def cleanup_stale(cls) -> list[int]:
        """SIGKILL lab journald processes and holders whose test process is gone; their pids."""
        killed: list[int] = []
        marker = f"{OWNER_ENV}=".encode()
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                environ = (proc_dir / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(marker):
                    owner = int(item[len(marker) :] or b"0")
                    if not pid_alive(owner):
                        kill_pid(int(proc_dir.name), signal.SIGKILL)
                        killed.append(int(proc_dir.name))
                    break
        return killed


def _summary(entry: Mapping[str, object]) -> str:
    fields = {k: v for k, v in entry.items() if not k.startswith("_") and not k.startswith("__")}
    return json.dumps(fields, sort_keys=True)[:400]
