"""Self-tests of the test lab (tests/lab/): namespaces, faults, the private journald."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import require, requires_root
from lab.journald import PrivateJournald, field_text, native_datagram
from lab.netns import NETNS_DIR, NetLab
from lab.procs import LabError, pid_alive, process_state, run

MSG_ID = "0123456789abcdef0123456789abcdef"
# Sends one native-protocol datagram to the *default* journald path; argv[1] = TARGET value.
SEND_CODE = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"MESSAGE=hello\nTARGET=" + sys.argv[1].encode()
         + b"\nMESSAGE_ID=0123456789abcdef0123456789abcdef\n", "/run/systemd/journal/socket")
"""
# Proves where it runs: binds a TCP socket to argv[2] (only possible inside the prober namespace)
# and then sends like SEND_CODE.
BIND_AND_SEND_CODE = r"""
import socket, sys
socket.socket().bind((sys.argv[2], 0))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"MESSAGE=from netns\nTARGET=" + sys.argv[1].encode() + b"\n",
         "/run/systemd/journal/socket")
"""
# Paths of the machine's own journald that the lab must never create or change.
REAL_PATHS = ("/run/systemd", "/run/systemd/journal", "/run/log", "/var/log/journal", "/run/mount")


def snapshot_real_paths() -> dict[str, object]:
    snap: dict[str, object] = {}
    for path in REAL_PATHS:
        p = Path(path)
        snap[path] = sorted(x.name for x in p.iterdir()) if p.is_dir() else p.exists()
    return snap


# -- network namespaces ------------------------------------------------------------------------


def test_rejects_addresses_outside_benchmark_ranges() -> None:
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        NetLab(host_ip4="192.0.2.5")
    with pytest.raises(ValueError, match="2001:2::/48"):
        NetLab(host_ip6="fd00::2")


def test_topology_is_isolated(lab: NetLab) -> None:
    assert (NETNS_DIR / lab.probe_ns).exists()
    assert (NETNS_DIR / lab.host_ns).exists()
    assert lab.probe_ns != lab.host_ns
    probe_addrs = lab.prober_run(["ip", "-o", "addr", "show", "dev", "veth0"]).stdout
    host_addrs = lab.host_run(["ip", "-o", "addr", "show", "dev", "veth0"]).stdout
    assert f"{lab.probe_ip4}/24" in probe_addrs
    assert f"{lab.probe_ip6}/64" in probe_addrs
    assert f"{lab.host_ip4}/24" in host_addrs
    assert f"{lab.host_ip6}/64" in host_addrs
    for line in (probe_addrs + host_addrs).splitlines():
        if "scope global" in line:
            assert "tentative" not in line  # usable at once (nodad)
    # The prober has lo and its veth end, whose peer lives in the host namespace: no other link.
    links = lab.prober_run(["ip", "-o", "-d", "link", "show"]).stdout.splitlines()
    assert [ln.split(":")[1].strip().split("@")[0] for ln in links] == ["lo", "veth0"]
    assert f"link-netns {lab.host_ns}" in links[1]
    # No default route: anything off the lab link is unreachable (checked without sending).
    for family in ("-4", "-6"):
        routes = lab.prober_run(["ip", family, "route", "show", "table", "all"]).stdout
        assert "default" not in routes
    for outside in ("198.19.255.1", "2001:2:0:ffff::1"):
        got = lab.prober_run(["ip", "route", "get", outside], check=False)
        assert got.returncode != 0
        assert "unreachable" in got.stderr
    # The root namespace holds neither lab addresses nor lab links.
    root = run(["ip", "-o", "addr", "show"]).stdout
    assert "198.18." not in root
    assert "2001:2:" not in root
    assert lab.probe_ns not in run(["ip", "-o", "-d", "link", "show"]).stdout


@pytest.mark.parametrize("family", [4, 6])
def test_ping_then_drop_then_answer_again(lab: NetLab, family: int) -> None:
    target = lab.host_ip4 if family == 4 else lab.host_ip6
    assert lab.ping(target)
    lab.set_drop(True)
    lab.set_drop(True)  # idempotent
    assert not lab.ping(target, timeout=0.5)
    assert lab.tcp_connect(target, 9, timeout=0.5) == "timeout"
    lab.set_drop(False)
    lab.set_drop(False)
    assert lab.ping(target)
    assert lab.tcp_connect(target, 9) == "refused"
    assert "hostwatch_lab" not in lab.nft_ruleset()  # table gone, not just emptied


@pytest.mark.skipif(shutil.which("ping") is None, reason="iputils-ping not installed")
def test_ping_binary(lab: NetLab) -> None:
    for ip in (lab.host_ip4, lab.host_ip6):
        assert lab.prober_run(["ping", "-c1", "-W1", ip], check=False).returncode == 0
    lab.set_drop(True)
    for ip in (lab.host_ip4, lab.host_ip6):
        assert lab.prober_run(["ping", "-c1", "-W1", ip], check=False).returncode != 0
    lab.set_drop(False)
    assert lab.prober_run(["ping", "-c1", "-W1", lab.host_ip4], check=False).returncode == 0


def test_reject_tcp_and_listener(lab: NetLab) -> None:
    lab.serve_tcp(8080)
    for ip in (lab.host_ip4, lab.host_ip6):
        assert lab.tcp_connect(ip, 8080) == "open"
    lab.set_reject_tcp(8080, True)
    lab.set_reject_tcp(8080, True)
    for ip in (lab.host_ip4, lab.host_ip6):
        assert lab.tcp_connect(ip, 8080) == "refused"
        assert lab.ping(ip)  # only that port is affected
    lab.set_drop(True)  # drop wins over reject: filtered
    assert lab.tcp_connect(lab.host_ip4, 8080, timeout=0.5) == "timeout"
    lab.set_drop(False)
    lab.set_reject_tcp(8080, False)
    assert lab.tcp_connect(lab.host_ip4, 8080) == "open"
    with pytest.raises(ValueError, match="port"):
        lab.set_reject_tcp(0, True)


def test_total_loss(lab: NetLab) -> None:
    lab.set_loss(100)
    assert not lab.ping(lab.host_ip4, timeout=0.5)
    assert not lab.ping(lab.host_ip6, timeout=0.5)
    lab.set_loss(30)
    assert "numgen random mod 100 < 30" in lab.nft_ruleset()
    lab.set_loss(0)
    assert lab.ping(lab.host_ip4)


def test_extra_host_addresses(lab: NetLab) -> None:
    lab.add_host_ip("198.18.0.10")
    lab.add_host_ip("2001:2::10")
    assert lab.ping("198.18.0.10")
    assert lab.ping("2001:2::10")
    with pytest.raises(ValueError, match="not on the lab"):
        lab.add_host_ip("198.18.1.10")


def test_sysctl_is_per_namespace(lab: NetLab) -> None:
    before = Path("/proc/sys/net/ipv4/ping_group_range").read_text()
    lab.sysctl(lab.probe_ns, "net.ipv4.ping_group_range", "0 2147483647")
    got = lab.prober_run(["cat", "/proc/sys/net/ipv4/ping_group_range"]).stdout.split()
    assert got == ["0", "2147483647"]
    assert Path("/proc/sys/net/ipv4/ping_group_range").read_text() == before


def test_http_get_inside_prober_namespace(lab: NetLab, tmp_path: Path) -> None:
    (tmp_path / "metrics").write_text("hostwatch_up 1\n")
    port = 19123
    server = subprocess.Popen(
        lab.prober_cmd([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                        "--directory", str(tmp_path), str(port)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = lab.http_get(f"{url}/metrics")
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "http.server did not come up"
                time.sleep(0.05)
        assert (status, body) == (200, "hostwatch_up 1\n")
        assert lab.http_get(f"{url}/nothing")[0] == 404
        # The listener is on the prober's loopback, not the machine's.
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    finally:
        server.kill()
        server.wait()
    with pytest.raises(ConnectionError):
        lab.http_get(f"{url}/metrics", timeout=1.0)


@requires_root
def test_close_kills_namespace_processes_and_deletes() -> None:
    require(netns=True)
    net = NetLab()
    sleeper = subprocess.Popen(net.prober_cmd(["sleep", "300"]))
    try:
        deadline = time.monotonic() + 5
        while str(sleeper.pid) not in run(["ip", "netns", "pids", net.probe_ns]).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        net.close()
    net.close()  # twice is fine
    assert sleeper.wait(5) == -9
    assert not (NETNS_DIR / net.probe_ns).exists()
    assert not (NETNS_DIR / net.host_ns).exists()


@requires_root
def test_cleanup_stale_removes_dead_runs_only() -> None:
    require(netns=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not pid_alive(dead.pid)
    stale = f"hwp-{dead.pid}-0"
    run(["ip", "netns", "add", stale])
    with NetLab() as live:
        NetLab.cleanup_stale()  # (a concurrent test run may have removed it first)
        assert not (NETNS_DIR / stale).exists()
        assert (NETNS_DIR / live.probe_ns).exists()


# -- private journald --------------------------------------------------------------------------


def test_native_entry_round_trip(journald: PrivateJournald) -> None:
    run(journald.wrap([sys.executable, "-c", SEND_CODE, "db1"]))
    entry = journald.wait_for(TARGET="db1")
    assert entry["MESSAGE"] == "hello"
    assert entry["MESSAGE_ID"] == MSG_ID
    assert entry["_TRANSPORT"] == "journal"
    assert len(journald.entries(TARGET="db1", MESSAGE_ID=MSG_ID)) == 1
    assert journald.entries(TARGET="db2") == []
    with pytest.raises(ValueError, match="field"):
        journald.entries(**{"target": "db1"})


def test_send_from_outside_and_binary_fields(journald: PrivateJournald) -> None:
    journald.send("two\nlines", TARGET="multi", RTT_SECONDS="0.012")
    entry = journald.wait_for({"TARGET": "multi"}, RTT_SECONDS="0.012")
    assert field_text(entry, "MESSAGE") == "two\nlines"
    with pytest.raises(ValueError, match="UPPERCASE"):
        native_datagram({"target": "x"})


def test_wrap_keeps_working_directory(
    journald: PrivateJournald, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = run(journald.wrap([sys.executable, "-c", "import os; print(os.getcwd())"])).stdout
    assert out.strip() == str(tmp_path)


@pytest.mark.parametrize("order", ["journald-first", "lab-first"])
def test_composes_with_netns(request: pytest.FixtureRequest, order: str) -> None:
    names = ["journald", "lab"] if order == "journald-first" else ["lab", "journald"]
    fixtures = {name: request.getfixturevalue(name) for name in names}
    jd, net = fixtures["journald"], fixtures["lab"]
    assert isinstance(jd, PrivateJournald)
    assert isinstance(net, NetLab)
    argv = [sys.executable, "-c", BIND_AND_SEND_CODE, f"netns-{order}", net.probe_ip4]
    run(jd.wrap(net.prober_cmd(argv)))
    entry = jd.wait_for(TARGET=f"netns-{order}")
    assert entry["MESSAGE"] == "from netns"
    # Without the wrapper the program sees the machine's path, where no journald listens here
    # (skipped where one does: the test must not write to a real journal).
    if not Path("/run/systemd/journal/socket").exists():
        alone = run(net.prober_cmd(argv), check=False)
        assert alone.returncode != 0
        assert "FileNotFoundError" in alone.stderr


def test_wait_for_reports_what_it_saw(journald: PrivateJournald) -> None:
    journald.send("something else", TARGET="other")
    journald.wait_for(lambda e: e.get("TARGET") == "other")
    with pytest.raises(AssertionError, match=r"TARGET.*nope"):
        journald.wait_for(timeout=0.2, TARGET="nope")
    with pytest.raises(AssertionError) as err:
        journald.wait_for(lambda e: False, timeout=0.2)
    assert "something else" in str(err.value)


def test_pause_and_resume(journald: PrivateJournald) -> None:
    journald.pause()
    assert process_state(journald.pid) == "T"
    journald.send("while stopped", TARGET="paused")  # fits in the socket buffer
    time.sleep(0.3)
    assert journald.entries(TARGET="paused") == []
    journald.resume()
    assert journald.wait_for(TARGET="paused")["MESSAGE"] == "while stopped"


def test_stop_then_start_again(journald: PrivateJournald) -> None:
    journald.stop()
    with pytest.raises(ConnectionRefusedError):
        journald.send("nobody listens", TARGET="gone")
    journald.start()
    journald.send("back", TARGET="back")
    assert journald.wait_for(TARGET="back")["MESSAGE"] == "back"


def test_config_keeps_machine_out(journald: PrivateJournald) -> None:
    assert journald.entries(_TRANSPORT="kernel") == []  # ReadKMsg=no
    assert list(journald.journal_dir.glob("*/system.journal"))
    assert "Storage=volatile" in (journald.directory / "journald.conf").read_text()


@requires_root
def test_close_leaves_nothing_and_real_paths_untouched(tmp_path: Path) -> None:
    require(journald=True)
    before = snapshot_real_paths()
    with PrivateJournald(tmp_path / "jd") as jd:
        pids = (jd.pid, jd.holder_pid)
        run(jd.wrap([sys.executable, "-c", SEND_CODE, "db1"]))
        jd.wait_for(TARGET="db1")
        assert snapshot_real_paths() == before  # the socket exists only inside
        assert Path(jd.socket_path).is_socket()
    for pid in pids:
        assert not pid_alive(pid)
    assert snapshot_real_paths() == before
    with pytest.raises(LabError):
        jd.wrap(["true"])
    # The journal stays for debugging and is still readable.
    assert jd.entries(TARGET="db1")
