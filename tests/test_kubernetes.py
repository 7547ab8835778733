"""deploy/kubernetes: the manifests checked structurally (there is no cluster here: nothing is
applied), the init container's shard script run for real, and the pod's security context
emulated around the real daemon to show ICMP works with it.

A real cluster run is not done by these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon_proc import running
from hostwatch.config import load_config
from hostwatch.model import Shard
from lab.netns import NetLab
from promstack import DEPLOY, load_yaml

K8S = DEPLOY / "kubernetes"
RENDERED = "/run/hostwatch/hostwatch.yml"
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"
V6 = "0:0:0:0:0:0:0:1"  # ::1 as a file_sd entry (a name may not start with ':')
NET_RAW_MASK = 1 << 13  # CAP_NET_RAW


def _docs() -> dict[str, dict[str, Any]]:
    """Every manifest of the kustomization by kind."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    docs = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            docs[doc["kind"]] = doc
    return docs


def _pod() -> dict[str, Any]:
    spec: dict[str, Any] = _docs()["StatefulSet"]["spec"]["template"]["spec"]
    return spec


def _container(name: str, init: bool = False) -> dict[str, Any]:
    containers = _pod()["initContainers" if init else "containers"]
    return next(c for c in containers if c["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _script() -> str:
    command = _container("shard-config", init=True)["command"]
    assert ["/bin/sh", "-ec"] == command[:2]
    script: str = command[2]
    return script


class TestManifests:
    def test_kustomization_files_exist(self) -> None:
        """Every resource and generated file of the kustomization exists and parses; the
        kinds are the issue's: StatefulSet, Service, ServiceMonitor, plus ConfigMaps."""
        kustomization = load_yaml(K8S / "kustomization.yaml")
        generated = [f for g in kustomization["configMapGenerator"] for f in g["files"]]
        for name in [*kustomization["resources"], *generated]:
            assert (K8S / name).is_file(), name
        assert {"Namespace", "StatefulSet", "Service", "ServiceMonitor",
                "PrometheusRule"} == set(_docs())
        assert {"hostwatch-config", "hostwatch-targets"} == {
            g["name"] for g in kustomization["configMapGenerator"]}

    def test_only_net_raw(self) -> None:
        """The daemon's container drops every capability and adds NET_RAW only; it cannot
        escalate, its root filesystem is read-only, it runs as non-root with the runtime's
        seccomp profile; the init container adds nothing; no host namespaces, no token."""
        pod = _pod()
        main = _container("hostwatch")["securityContext"]
        assert {"drop": ["ALL"], "add": ["NET_RAW"]} == main["capabilities"]
        assert main["allowPrivilegeEscalation"] is False
        assert main["readOnlyRootFilesystem"] is True
        assert main["runAsNonRoot"] is True
        assert not main.get("privileged", False)
        init = _container("shard-config", init=True)["securityContext"]
        assert {"drop": ["ALL"]} == init["capabilities"]
        assert init["readOnlyRootFilesystem"] is True
        assert init["allowPrivilegeEscalation"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert "RuntimeDefault" == pod["securityContext"]["seccompProfile"]["type"]
        assert pod["automountServiceAccountToken"] is False
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key, False), key

    def test_unprivileged_icmp_sysctl_covers_the_pod_group(self) -> None:
        """The pod sets net.ipv4.ping_group_range (a safe sysctl) to a range holding its
        runAsGroup, so datagram ICMP works without an effective capability."""
        pod = _pod()["securityContext"]
        sysctls = {s["name"]: s["value"] for s in pod["sysctls"]}
        low, high = map(int, sysctls["net.ipv4.ping_group_range"].split())
        assert low <= pod["runAsGroup"] <= high

    def test_health_probes_and_port(self) -> None:
        """Liveness on /-/healthy, readiness (and startup) on /-/ready, on the metrics port
        10115 the daemon listens on."""
        main = _container("hostwatch")
        assert [{"name": "metrics", "containerPort": 10115}] == main["ports"]
        assert "--web.listen-address=:10115" in main["args"]
        assert {"path": "/-/healthy", "port": "metrics"} == main["livenessProbe"]["httpGet"]
        assert {"path": "/-/ready", "port": "metrics"} == main["readinessProbe"]["httpGet"]
        assert {"path": "/-/ready", "port": "metrics"} == main["startupProbe"]["httpGet"]

    def test_ordinal_is_the_shard_index(self) -> None:
        """The init container gets the ordinal from the pod-index label (Kubernetes >= 1.28)
        or the pod name, SHARD_TOTAL equals replicas, and it writes the file the daemon reads,
        on a volume both mount."""
        statefulset = _docs()["StatefulSet"]
        init, main = _container("shard-config", init=True), _container("hostwatch")
        env = _env(init)
        assert {"fieldRef": {"fieldPath": POD_INDEX_LABEL}} == env["POD_INDEX"]
        assert {"fieldRef": {"fieldPath": "metadata.name"}} == env["POD_NAME"]
        assert str(statefulset["spec"]["replicas"]) == env["SHARD_TOTAL"]
        assert f"--config.file={RENDERED}" in main["args"]
        assert f"> {RENDERED}" in _script()
        mounts = {m["name"]: m["mountPath"] for c in (init, main) for m in c["volumeMounts"]
                  if m["name"] == "rendered"}
        assert {"rendered": str(Path(RENDERED).parent)} == mounts
        assert "shard" not in load_yaml(K8S / "hostwatch.yml")  # the init container adds it

    def test_service_and_servicemonitor_select_the_pods(self) -> None:
        """The headless Service selects the pods and names their port; the ServiceMonitor
        selects the Service, scrapes that port, and takes job from the Service's name label
        (job="hostwatch", as HostwatchScrapeFailed expects)."""
        docs = _docs()
        statefulset, service, monitor = (docs["StatefulSet"], docs["Service"],
                                         docs["ServiceMonitor"])
        pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert "None" == service["spec"]["clusterIP"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["metadata"]["name"] == statefulset["spec"]["serviceName"]
        assert [{"name": "metrics", "port": 10115, "targetPort": "metrics"}] == \
            service["spec"]["ports"]
        spec = monitor["spec"]
        assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert ["metrics"] == [e["port"] for e in spec["endpoints"]]
        assert "hostwatch" == service["metadata"]["labels"][spec["jobLabel"]]

    def test_prometheusrule_is_the_rules_file(self) -> None:
        """The PrometheusRule carries exactly the groups of the shipped rules file."""
        rules = load_yaml(DEPLOY / "prometheus" / "rules" / "hostwatch.rules.yml")
        assert rules == _docs()["PrometheusRule"]["spec"]

    def test_kustomize_build(self) -> None:
        """`kubectl kustomize` renders it: the config ConfigMap gets a hash suffix (a change
        rolls the pods), the targets ConfigMap keeps its name (changes apply live), and the
        image is replaced. Skipped without kubectl (not a Debian package)."""
        if shutil.which("kubectl") is None:
            pytest.skip("kubectl not installed")
        result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True,
                                text=True, timeout=60, check=False)
        assert 0 == result.returncode, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        assert "hostwatch-targets" in maps
        config_map = next(m for m in maps if m.startswith("hostwatch-config-"))
        statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
        pod = statefulset["spec"]["template"]["spec"]
        volumes = {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}
        assert {"config": config_map, "targets": "hostwatch-targets"}.items() <= volumes.items()
        assert {"registry.example.net/hostwatch:0.1.0"} == {
            c["image"] for c in pod["containers"] + pod["initContainers"]}
        assert all(d["metadata"]["namespace"] == "hostwatch" for d in docs
                   if d["kind"] != "Namespace")


def _render(workdir: Path, env: dict[str, str], targets: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run the init container's script with /bin/sh, its two directories moved into
    `workdir` (the only rewrite), `hostwatch` from this venv on PATH."""
    etc, run_dir = workdir / "etc", workdir / "run"
    (etc / "targets").mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    shutil.copy(K8S / "hostwatch.yml", etc / "hostwatch.yml")
    (etc / "targets" / "targets.yml").write_text(
        targets if targets is not None else (K8S / "targets.yml").read_text())
    config = (etc / "hostwatch.yml").read_text().replace("/etc/hostwatch", str(etc))
    (etc / "hostwatch.yml").write_text(config)
    script = _script().replace("/etc/hostwatch", str(etc)).replace("/run/hostwatch",
                                                                   str(run_dir))
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": path, **env})


class TestShardScript:
    @pytest.mark.parametrize(("env", "index"), [
        ({"POD_INDEX": "", "POD_NAME": "hostwatch-2"}, 2),
        ({"POD_NAME": "hostwatch-2"}, 2),
        ({"POD_INDEX": "1", "POD_NAME": "hostwatch-2"}, 1),
        ({"POD_INDEX": "0", "POD_NAME": "hostwatch-0"}, 0),
    ])
    def test_index_from_label_or_pod_name(self, tmp_path: Path, env: dict[str, str],
                                          index: int) -> None:
        """The pod-index label wins; without it the pod name's ordinal is used; the rendered
        file passes `hostwatch check-config` and says shard {index, 3}."""
        result = _render(tmp_path, {**env, "SHARD_TOTAL": "3"})
        assert 0 == result.returncode, result.stdout + result.stderr
        assert Shard(index, 3) == load_config(tmp_path / "run" / "hostwatch.yml").shard

    def test_no_ordinal_fails(self, tmp_path: Path) -> None:
        """A pod name without an ordinal stops the pod with a message, before the daemon."""
        result = _render(tmp_path, {"POD_NAME": "hostwatch", "SHARD_TOTAL": "3"})
        assert 0 != result.returncode
        assert "no shard index" in result.stderr

    def test_index_beyond_total_fails_check_config(self, tmp_path: Path) -> None:
        """replicas raised without SHARD_TOTAL: shard 3 of 3 is rejected by check-config."""
        result = _render(tmp_path, {"POD_NAME": "hostwatch-3", "SHARD_TOTAL": "3"})
        assert 0 != result.returncode
        assert "index" in result.stdout + result.stderr


def _world_readable_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="hostwatch-k8s-"))
    directory.chmod(0o755)
    return directory


@pytest.fixture
def pod_dir() -> Iterator[Path]:
    """A directory the pod's user (65532) can read: pytest's tmp_path is root's only."""
    directory = _world_readable_dir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _pod_python() -> list[str]:
    """A prefix running the daemon with a Python the pod's user can execute: the venv's
    interpreter may live under /root (pyenv), so the system python3 of the same version, with
    the venv's site-packages and src/ on PYTHONPATH."""
    system = Path("/usr/bin/python3")
    if not system.exists():
        pytest.skip("no /usr/bin/python3")
    version = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    if version.strip() != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {version.strip()}, the venv {sys.version_info[:2]}")
    site = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    src = DEPLOY.parent / "src"
    # daemon_proc appends `sys.executable -m hostwatch FLAGS`: drop the first three words
    return ["env", f"PYTHONPATH={src}:{site}", "sh", "-c", 'shift 3; exec "$0" -m hostwatch "$@"',
            str(system)]


class TestPodSecurityContext:
    def test_icmp_works_as_the_pod_runs_it(self, lab: NetLab, pod_dir: Path) -> None:
        """The daemon as the pod runs it: uid/gid 65532, no effective capability, NET_RAW
        only in the bounding set, no_new_privs, in a network namespace whose
        ping_group_range is the manifest's, with the config the init container rendered for
        the ordinal that owns 127.0.0.1 (targets file rewritten to loopback). ICMP uses
        datagram sockets, the owned targets are UP, /-/ready and /-/healthy answer 200, and
        the process really ran so (its /proc status)."""
        pod = _pod()["securityContext"]
        uid, gid = pod["runAsUser"], pod["runAsGroup"]
        sysctl = {s["name"]: s["value"] for s in pod["sysctls"]}["net.ipv4.ping_group_range"]
        lab.prober_run(["sysctl", "-w", f"net.ipv4.ping_group_range={sysctl}"])
        total = 3
        index = next(i for i in range(total) if Shard(i, total).owns("127.0.0.1"))
        rendered = _render(pod_dir, {"POD_NAME": f"hostwatch-{index}",
                                     "SHARD_TOTAL": str(total)},
                           targets=f'- targets: ["127.0.0.1", "{V6}"]\n  labels: {{role: lo}}\n')
        assert 0 == rendered.returncode, rendered.stderr
        for path in pod_dir.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        config = (pod_dir / "run" / "hostwatch.yml").read_text()
        owned = {n for n in ("127.0.0.1", V6) if Shard(index, total).owns(n)}

        def get(url: str) -> tuple[int, str]:
            try:
                return lab.http_get(url)
            except ConnectionError:
                return 0, ""
        prefix = lab.prober_cmd([
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all,+net_raw", "--no-new-privs",
            *_pod_python()])
        daemon_dir = pod_dir / "daemon"
        daemon_dir.mkdir(mode=0o755)
        with running(daemon_dir, config, prefix=prefix, get=get) as daemon:
            scrape = daemon.wait_for(
                lambda s: {d["target"] for d, v in s.find("hostwatch_probe_state", state="up")
                           if v == 1} == owned, what="the owned loopback targets UP")
            assert 1 == scrape.value("hostwatch_icmp_socket_info", family="ipv4", mode="dgram")
            assert 1 == scrape.value("hostwatch_icmp_socket_info", family="ipv6", mode="dgram")
            assert owned == {d["target"] for d, _ in scrape.find("hostwatch_probe_sent_total")}
            assert 200 == get(daemon.url + "/-/ready")[0]
            assert 200 == get(daemon.url + "/-/healthy")[0]
            status = _proc_status(daemon.proc.pid)
        assert [str(uid)] * 4 == status["Uid"].split()
        assert [str(gid)] * 4 == status["Gid"].split()
        assert 0 == int(status["CapEff"], 16) == int(status["CapPrm"], 16)
        assert NET_RAW_MASK == int(status["CapBnd"], 16)
        assert "1" == status["NoNewPrivs"]


def _proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status of the daemon (ip netns exec, setpriv, env and sh all exec into it)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    assert "python" in status["Name"], status["Name"]
    return {k: v.strip() for k, v in status.items()}
