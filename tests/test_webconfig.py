"""`--web.config.file`: TLS, client certificates and bcrypt basic auth on the real endpoint."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from daemon_proc import free_port, running
from hostwatch.config import ConfigError
from hostwatch.webconfig import load_web_config
from tls_certs import Certs, make_certs

CONFIG = "targets:\n  - {name: lo, host: 127.0.0.1, probes: {icmp: }}\n"
PASSWORD = "s3cret"  # noqa: S105 - a test password


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def _get(url: str, context: ssl.SSLContext | None, auth: str | None = None
         ) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 - our own https URL on loopback
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def _tls_getter(context: ssl.SSLContext, auth: str | None):  # type: ignore[no-untyped-def]
    def get(url: str) -> tuple[int, str]:
        try:
            return _get(url.replace("http://", "https://"), context, auth)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""
    return get


class TestLoad:
    def test_problems_with_location(self, tmp_path: Path) -> None:
        """Unknown and unsupported keys, a non-bcrypt password and a missing key file are
        each reported with file:line:column."""
        path = tmp_path / "web.yml"
        path.write_text("tls_server_config:\n  cert_file: a.crt\n  cipher_suites: [x]\n"
                        "basic_auth_users:\n  alice: plaintext\nhttp_serverconfig: {}\n")
        with pytest.raises(ConfigError) as caught:
            load_web_config(str(path))
        text = str(caught.value)
        assert f"{path}:3:3: tls_server_config: `cipher_suites` is not supported" in text
        assert f"{path}:5:10: basic_auth_users.alice: is not a bcrypt hash" in text
        assert f"{path}:6:1: unknown key 'http_serverconfig'" in text
        assert "needs both `cert_file` and `key_file`" in text

    def test_client_auth_needs_ca(self, tmp_path: Path, certs: Certs) -> None:
        """Asking for client certificates without a CA to verify them is an error."""
        path = tmp_path / "web.yml"
        path.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                        f"  key_file: {certs.server_key}\n"
                        "  client_auth_type: RequireAndVerifyClientCert\n")
        with pytest.raises(ConfigError, match="needs `client_ca_file`"):
            load_web_config(str(path))


class TestServe:
    def test_tls_basic_auth_and_idle_clients(self, tmp_path: Path, certs: Certs) -> None:
        """Over TLS with basic auth: no or wrong credentials get 401, the right ones 200;
        plain HTTP is refused; idle TCP clients that never start the handshake do not block
        a scrape."""
        web = tmp_path / "web.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                       f"  key_file: {certs.server_key}\n  min_version: TLS12\n"
                       f"basic_auth_users:\n  prometheus: {_hash()}\n")
        context = ssl.create_default_context(cafile=str(certs.ca))
        good = _tls_getter(context, f"prometheus:{PASSWORD}")
        with running(tmp_path, CONFIG, get=good, extra=["--web.config.file", str(web)]) as d:
            url = f"https://127.0.0.1:{d.port}/metrics"
            idle = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(5)]
            try:
                assert 401 == _get(url, context)[0]
                assert 401 == _get(url, context, "prometheus:wrong")[0]
                status, body = _get(url, context, f"prometheus:{PASSWORD}")
                assert 200 == status
                assert "hostwatch_build_info" in body
                assert 200 == _get(url, context, f"prometheus:{PASSWORD}")[0]  # cached check
            finally:
                for s in idle:
                    s.close()
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5)

    def test_client_certificate_required(self, tmp_path: Path, certs: Certs) -> None:
        """With RequireAndVerifyClientCert a client without a certificate fails the
        handshake; one with a certificate from the CA is served."""
        web = tmp_path / "web.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                       f"  key_file: {certs.server_key}\n"
                       "  client_auth_type: RequireAndVerifyClientCert\n"
                       f"  client_ca_file: {certs.ca}\n")
        with_cert = ssl.create_default_context(cafile=str(certs.ca))
        with_cert.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        without = ssl.create_default_context(cafile=str(certs.ca))
        with running(tmp_path, CONFIG, get=_tls_getter(with_cert, None),
                     extra=["--web.config.file", str(web)]) as d:
            url = f"https://127.0.0.1:{d.port}/-/healthy"
            assert 200 == _get(url, with_cert)[0]
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _get(url, without)
            assert 200 == _get(url, with_cert)[0]  # the failed handshake did no harm


class TestPrometheusOverTls:
    def test_real_prometheus_scrapes_with_tls_and_basic_auth(self, tmp_path: Path,
                                                             certs: Certs) -> None:
        """Debian's prometheus scrapes the daemon over TLS with basic auth: `up` is 1."""
        web = tmp_path / "web.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                       f"  key_file: {certs.server_key}\n"
                       f"basic_auth_users:\n  prometheus: {_hash()}\n")
        context = ssl.create_default_context(cafile=str(certs.ca))
        with running(tmp_path, CONFIG, get=_tls_getter(context, f"prometheus:{PASSWORD}"),
                     extra=["--web.config.file", str(web)]) as d:
            up = _prometheus_up(tmp_path, d.port, certs)
        assert "1" == up


def _prometheus_up(tmp: Path, port: int, certs: Certs) -> str:
    prom_port = free_port()
    (tmp / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: hostwatch
    scheme: https
    tls_config: {{ca_file: {certs.ca}}}
    basic_auth: {{username: prometheus, password: {PASSWORD}}}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = _query(prom_port, 'up{job="hostwatch"}')
            if value is not None:
                return value
            time.sleep(0.5)
        return "no result"
    finally:
        proc.terminate()
        proc.wait(10)


def _query(port: int, expr: str) -> str | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
    except (urllib.error.URLError, ConnectionError, KeyError, ValueError):
        return None
    return str(result[0]["value"][1]) if result else None
