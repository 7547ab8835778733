"""A real systemd 252 as PID 1 of a private namespace, for the unit and package tests.

`SystemdLab` boots `/lib/systemd/systemd --system --unit=hostwatch-lab.target` as PID 1 of
`unshare --pid --mount --uts --ipc --net --cgroup`, and drives it from outside with
`nsenter -t PID1 -m -p -n -u -i -- systemctl ...`. The machine's own files are never written:

    /run, /tmp, /var/tmp        tmpfs (so tmpfiles and journald write nothing outside)
    /etc, /usr, /var, /opt      overlayfs: the machine's tree below, a tmpfs on top; `dpkg -i`
                                inside writes (package files, the dpkg database, the sysusers
                                user in /etc/passwd) land on the tmpfs and vanish with the lab
    /sys/fs/cgroup              a fresh cgroup2 mount inside a cgroup namespace rooted at
                                /sys/fs/cgroup/unified/hostwatch-lab-<pid> (removed on close)

DANGER (DESIGN.md): booted carelessly, systemd runs `systemd-tmpfiles --remove` on the shared
file system and starts every enabled service. Here, besides the tmpfs and overlays above, every
unit file except journald's and the targets is masked (a symlink to /dev/null in the overlay's
/etc/systemd/system), every generator is masked (/etc/systemd/system-generators), /etc/fstab is
empty, and PID 1 boots our own target, which wants only journald.

Stage 0 (`python3 systemd_lab.py stage0 ...`) is PID 1 before it execs systemd: it makes the
mounts, writes the masks, brings up `lo` and execs systemd with `container=hostwatch-lab`, so
systemd behaves as in a container (no kernel modules, no hardware). Closing the lab SIGKILLs
that PID 1 by its pid, which ends every process in the namespace, then removes the cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

SYSTEMD = "/lib/systemd/systemd"
CGROUP_V2_ROOT = Path("/sys/fs/cgroup/unified")
CGROUP_PREFIX = "hostwatch-lab-"
LAB_TARGET = "hostwatch-lab.target"
OVERLAID = ("/etc", "/usr", "/var", "/opt")
STAGING = "/run/hostwatch-lab"  # inside the namespace: overlay upper dirs, files passed in
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
GENERATOR_DIRS = ("/lib/systemd/system-generators", "/usr/lib/systemd/system-generators",
                  "/etc/systemd/system-generators")
# Units the lab keeps: journald and what it needs. Targets and slices are not masked (they only
# group units; everything they would pull in is masked).
KEEP_UNITS = frozenset({
    "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-journald@.service", "systemd-journald@.socket", "systemd-journald-varlink@.socket",
})
TARGET_UNIT = """[Unit]
Description=hostwatch test lab
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
"""
JOURNALD_CONF = """[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
MaxLevelStore=debug
"""
# LogLevel=debug: PID 1 then logs each sd_notify message it gets ("Got notification message
# from PID ..."), which is how the tests see READY=1, RELOADING=1 and STOPPING=1 arrive.
SYSTEM_CONF = """[Manager]
LogLevel=debug
ShowStatus=no
DefaultTimeoutStartSec=30s
DefaultTimeoutStopSec=5s
DumpCore=no
CrashShell=no
"""


class SystemdLabError(RuntimeError):
    """The lab could not be set up, or a command in it failed."""


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    drop = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID",
            "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra or {})
    return env


def missing_requirements() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    tools = ["unshare", "nsenter", "setpriv", "mount", "ip", "dpkg"]
    missing = [t for t in tools if shutil.which(t) is None]
    if not os.access(SYSTEMD, os.X_OK):
        missing.append("systemd")
    if missing:
        return f"missing {', '.join(missing)} (`make deps-test` installs them)"
    if not (CGROUP_V2_ROOT / "cgroup.procs").exists():
        return f"no cgroup2 hierarchy at {CGROUP_V2_ROOT}"
    with open("/proc/filesystems", encoding="ascii") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlayfs"
    return None


class SystemdLab:
    """systemd as PID 1 of a private namespace; see the module docstring."""

    def __init__(self, directory: Path, *, boot_timeout: float = 60.0) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "systemd-console.log"
        self.cgroup = CGROUP_V2_ROOT / f"{CGROUP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        self._unshare: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        try:
            self._boot(boot_timeout)
        except BaseException:
            self.close()
            raise

    # -- lifetime ------------------------------------------------------------------------------

    def _boot(self, timeout: float) -> None:
        self.cgroup.mkdir()
        argv = [
            sys.executable, "-I", __file__, "enter-cgroup", str(self.cgroup / "cgroup.procs"),
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--cgroup",
            "--kill-child", "--mount-proc", "--propagation", "private", "--",
            sys.executable, "-I", __file__, "stage0",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._unshare = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=_clean_env({"SYSTEMD_LOG_COLOR": "0"}), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.pid1:
            self.pid1 = self._child_pid()
            self._check_alive(deadline, "the namespace's PID 1 did not appear")
            time.sleep(0.02)
        while True:
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            self._check_alive(deadline, f"systemd did not finish booting (state {state!r})")
            time.sleep(0.1)
        if state == "degraded":
            failed = self.systemctl("list-units", "--failed", "--no-legend", check=False).stdout
            raise SystemdLabError(f"the lab booted degraded; failed units:\n{failed}")

    def _child_pid(self) -> int:
        assert self._unshare is not None
        try:
            children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
            text = children.read_text().split()
        except OSError:
            return 0
        # setpriv execs unshare, which forks PID 1 (our stage 0, then systemd).
        return int(text[0]) if text else 0

    def _check_alive(self, deadline: float, what: str) -> None:
        assert self._unshare is not None
        if self._unshare.poll() is not None or time.monotonic() > deadline:
            raise SystemdLabError(f"{what}; console log:\n{self.console_log()[-6000:]}")

    def console_log(self) -> str:
        """What stage 0 and systemd wrote to their console (our log file)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """SIGKILL PID 1 (ends everything in the namespace), reap, remove the cgroup."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        if self._unshare is not None:
            if self._unshare.poll() is None and not self.pid1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._unshare.pid, signal.SIGKILL)
            try:
                self._unshare.wait(10)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(10)
        remove_cgroup(self.cgroup)

    def __enter__(self) -> SystemdLab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def cleanup_stale() -> None:
        """Remove cgroups left by labs whose test process is gone."""
        for path in CGROUP_V2_ROOT.glob(f"{CGROUP_PREFIX}*"):
            owner = path.name.removeprefix(CGROUP_PREFIX).split("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                for pid in _cgroup_pids(path):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                remove_cgroup(path)

    # -- using it ------------------------------------------------------------------------------

    def path(self, inside: str) -> Path:
        """A path inside the lab, as reachable from outside (through /proc/PID1/root)."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the lab (on its tmpfs or overlays, never the machine's disk)."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def copy_in(self, source: Path, inside: str) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            ) -> subprocess.CompletedProcess[str]:
        """Run argv inside every namespace of the lab (no shell)."""
        full = ["nsenter", "-t", str(self.pid1), "-m", "-p", "-n", "-u", "-i", "--wd=/", "--",
                *argv]
        env = _clean_env({"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8",
                          "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "DEBIAN_FRONTEND": "noninteractive"})
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired as exc:
            raise SystemdLabError(f"timed out after {timeout}s: {list(argv)}") from exc
        if check and proc.returncode != 0:
            raise SystemdLabError(f"exit {proc.returncode}: {list(argv)}\nstdout: "
                                  f"{proc.stdout.strip()}\nstderr: {proc.stderr.strip()}")
        return proc

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0,
                  ) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *match: str, since_cursor: str | None = None) -> list[dict[str, object]]:
        """Entries of the lab's journal as JSON (oldest first), e.g. journal("-u", "x").

        With a match, entries after `since_cursor` are picked here by sequence number, not
        by `--after-cursor`: journalctl 252 given both skipped, in about half the runs, the
        line a service wrote to its stdout stream just before it was killed (the entry has
        the unit's fields: the match alone finds it, and so does the cursor alone)."""
        argv = ["journalctl", "--no-pager", "--output=json", "--all", *match]
        if since_cursor and not match:
            argv.append(f"--after-cursor={since_cursor}")
        out = self.run(argv, check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if since_cursor and match:
            after = _seqnum(since_cursor)
            entries = [e for e in entries if _seqnum(str(e["__CURSOR"])) > after]
        return entries

    def cursor(self) -> str:
        """The journal's current end, to read only what comes after it."""
        entries = self.journal("--lines=1")
        return str(entries[-1]["__CURSOR"]) if entries else ""

    def http_get(self, url: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET inside the lab's network namespace; (status, body), 0 if nothing answers."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
            "    print(r.status); sys.stdout.write(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); sys.stdout.write(e.read().decode())\n"
            "except OSError:\n"
            "    print(0)\n"
        )
        out = self.run(["/usr/bin/python3", "-I", "-c", code, url], timeout=timeout + 10).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0,
                   interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)


def remove_cgroup(path: Path) -> None:
    """rmdir a cgroup tree bottom-up (cgroup directories go with rmdir, not unlink)."""
    if not path.is_dir():
        return
    for _ in range(50):
        dirs = sorted((p for p in path.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True)
        for sub in [*dirs, path]:
            with contextlib.suppress(OSError):
                sub.rmdir()
        if not path.exists():
            return
        time.sleep(0.1)  # the last processes of a killed namespace are still exiting


def _cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in procs.read_text().split())
    return pids


# -- stage 0: PID 1 of the namespace, before systemd ------------------------------------------

def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LIBMOUNT_UTAB": "/run/utab"})


def _mask_all(etc_units: Path) -> None:
    """Mask every unit file except KEEP_UNITS, targets and slices; mask every generator."""
    names: set[str] = set()
    for directory in UNIT_DIRS:
        with contextlib.suppress(OSError):
            names.update(p.name for p in Path(directory).iterdir()
                         if not p.is_dir() and "." in p.name)
    for name in sorted(names):
        if name in KEEP_UNITS or name.endswith((".target", ".slice")):
            continue
        link = etc_units / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    generators = Path("/etc/systemd/system-generators")
    generators.mkdir(parents=True, exist_ok=True)
    for directory in GENERATOR_DIRS:
        with contextlib.suppress(OSError):
            for gen in Path(directory).iterdir():
                link = generators / gen.name
                if not link.is_symlink():
                    with contextlib.suppress(FileNotFoundError):
                        link.unlink()
                    link.symlink_to("/dev/null")


def stage0() -> None:
    """PID 1 of the fresh namespaces: make the lab's file system, then exec systemd."""
    if os.getpid() != 1:
        raise SystemExit("stage0 must run as PID 1 of a new PID namespace")
    # Never touch the machine's mount namespace: ours was made by unshare with private
    # propagation; check it is not the same as the parent's (which we can no longer see), but
    # at least that / is not shared.
    _sh("mount", "--make-rprivate", "/")
    for where in ("/run", "/tmp", "/var/tmp"):
        _sh("mount", "-t", "tmpfs", "-o", "mode=1777" if "tmp" in where else "mode=0755",
            "hostwatch-lab", where)
    os.makedirs(STAGING, mode=0o700)
    _sh("mount", "-t", "tmpfs", "-o", "mode=0700", "hostwatch-lab", STAGING)
    for tree in OVERLAID:
        upper = f"{STAGING}/overlay{tree}/upper"
        work = f"{STAGING}/overlay{tree}/work"
        os.makedirs(upper)
        os.makedirs(work)
        _sh("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={tree},upperdir={upper},workdir={work}", tree)
    for where in ("/var/tmp", "/var/log/journal"):
        if os.path.isdir(where):
            _sh("mount", "-t", "tmpfs", "-o", "mode=1777", "hostwatch-lab", where)
    _sh("mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup")
    # /etc is now the overlay: these writes never reach the machine's /etc.
    Path("/etc/fstab").write_text("# hostwatch lab: nothing to mount\n")
    with contextlib.suppress(FileNotFoundError):
        Path("/etc/crypttab").unlink()
    etc_units = Path("/etc/systemd/system")
    for sub in list(etc_units.iterdir()):
        if sub.is_dir() and not sub.is_symlink() and sub.name.endswith((".wants", ".requires")):
            shutil.rmtree(sub)
    _mask_all(etc_units)
    (etc_units / LAB_TARGET).write_text(TARGET_UNIT)
    for conf, text in (("journald.conf.d", JOURNALD_CONF), ("system.conf.d", SYSTEM_CONF)):
        os.makedirs(f"/etc/systemd/{conf}", exist_ok=True)
        Path(f"/etc/systemd/{conf}/hostwatch-lab.conf").write_text(text)
    Path("/etc/hostname").write_text("hostwatch-lab\n")
    # This machine's policy-rc.d forbids starting services from maintainer scripts (as in a
    # container image); a real Debian system has none, so the lab has none either.
    Path("/usr/sbin/policy-rc.d").unlink(missing_ok=True)
    _sh("ip", "link", "set", "lo", "up")
    env = {"container": "hostwatch-lab", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", "SYSTEMD_LOG_COLOR": "0"}
    sys.stdout.flush()
    argv = [SYSTEMD, "--system", f"--unit={LAB_TARGET}", "--log-target=journal",
            "--show-status=no"]
    os.execve(SYSTEMD, argv, env)  # noqa: S606 - an exec, no shell: PID 1 becomes systemd


def enter_cgroup(procs: str, argv: list[str]) -> None:
    """Move this process into the lab's cgroup, then exec argv (which makes the namespaces)."""
    with open(procs, "w", encoding="ascii") as f:
        f.write(str(os.getpid()))
    os.execvp(argv[0], argv)  # noqa: S606 - an exec of a fixed argv, no shell


def _seqnum(cursor: str) -> int:
    """The sequence number in a journal cursor (`s=…;i=<hex>;b=…`): the order journald wrote
    the entries in."""
    fields = dict(part.split("=", 1) for part in cursor.split(";") if "=" in part)
    return int(fields["i"], 16)


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage0"]:
        stage0()
    elif sys.argv[1:2] == ["enter-cgroup"]:
        enter_cgroup(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit("usage: systemd_lab.py stage0 | enter-cgroup PROCS ARGV...")

