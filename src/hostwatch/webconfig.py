"""`--web.config.file`: TLS and basic auth for the HTTP endpoint, in exporter-toolkit's format.

```yaml
tls_server_config:
  cert_file: server.crt          # paths relative to this file's folder
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), ...
  client_ca_file: ca.crt
  min_version: TLS12             # TLS10 .. TLS13
  max_version: TLS13
basic_auth_users:
  alice: $2y$10$...              # bcrypt hashes (htpasswd -nBC 10 alice)
```

Strict like the main config: unknown or unsupported keys are errors with file:line. Password
checks run bcrypt in a worker thread (never in the event loop) and successful credentials are
remembered (as a SHA-256 digest) so a scrape every few seconds costs one bcrypt per restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field

import yaml

from hostwatch.config import ConfigError, Problem
from hostwatch.model import SourceLocation

__all__ = ["Authenticator", "WebConfig", "load_web_config"]

_TOP = ("tls_server_config", "basic_auth_users", "http_server_config")
_TLS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
        "max_version")
_UNSUPPORTED = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
                "client_allowed_sans", "cert", "key", "client_ca")
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CACHE_SIZE = 64


@dataclass(frozen=True)
class WebConfig:
    """What the web config file asks for: an SSL context (or None) and the users."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    source: str = ""


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []

    def add(self, node: yaml.Node | None, path: str, message: str) -> None:
        at = None if node is None else SourceLocation(
            self.source, node.start_mark.line + 1, node.start_mark.column + 1)
        self.items.append(Problem(at, path, message, self.source))


def _mapping(node: yaml.Node | None, path: str, problems: _Problems,
             allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
        return {}
    if not isinstance(node, yaml.MappingNode):
        problems.add(node, path, "expected a mapping")
        return {}
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        name = str(key.value)
        if name in _UNSUPPORTED:
            problems.add(key, path, f"`{name}` is not supported by hostwatch (Python's ssl "
                         "chooses secure defaults); remove it")
        elif name not in allowed:
            problems.add(key, path, f"unknown key {name!r}; use one of "
                         + ", ".join(f"`{a}`" for a in allowed))
        elif name in out:
            problems.add(key, path, f"duplicate key {name!r}; keep one")
        else:
            out[name] = value
    return out


def _text(node: yaml.Node, path: str, problems: _Problems) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.value:
        return str(node.value)
    problems.add(node, path, "expected a non-empty string")
    return None


def load_web_config(path: str) -> WebConfig:
    """Read and validate the web config; ConfigError with file:line for every problem."""
    problems = _Problems(path)
    try:
        with open(path, encoding="utf-8") as f:
            root = yaml.compose(f.read(), Loader=yaml.SafeLoader)
    except OSError as err:
        raise ConfigError([Problem(None, "", f"cannot read it: {err.strerror}; check "
                                   "--web.config.file", path)]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError([Problem(None, "", f"is not valid YAML: {err}", path)]) from None
    top = _mapping(root, "", problems, _TOP)
    base = os.path.dirname(os.path.abspath(path))
    users = _users(top.get("basic_auth_users"), problems)
    tls = _tls(top.get("tls_server_config"), base, problems)
    if problems.items:
        raise ConfigError(problems.items)
    return WebConfig(tls, users, path)


def _users(node: yaml.Node | None, problems: _Problems) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    if node is None:
        return users
    if not isinstance(node, yaml.MappingNode):
        problems.add(node, "basic_auth_users", "expected a mapping of user names to bcrypt "
                     "hashes")
        return users
    for key, value in node.value:
        hashed = _text(value, f"basic_auth_users.{key.value}", problems)
        if hashed is None:
            continue
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.add(value, f"basic_auth_users.{key.value}", "is not a bcrypt hash; create "
                         "one with `htpasswd -nBC 10 USER` and paste the part after the colon")
            continue
        users[str(key.value)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return users


def _tls(node: yaml.Node | None, base: str, problems: _Problems) -> ssl.SSLContext | None:
    if node is None:
        return None
    keys = _mapping(node, "tls_server_config", problems, _TLS)
    values = {k: _text(v, f"tls_server_config.{k}", problems) for k, v in keys.items()}
    cert, key = values.get("cert_file"), values.get("key_file")
    if cert is None or key is None:
        problems.add(node, "tls_server_config", "needs both `cert_file` and `key_file`")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _versions(context, keys, values, problems)
    try:
        context.load_cert_chain(os.path.join(base, cert), os.path.join(base, key))
    except (OSError, ssl.SSLError) as err:
        problems.add(keys["cert_file"], "tls_server_config.cert_file",
                     f"cannot load the certificate and key: {err}")
    _client_auth(context, keys, values, base, problems)
    return context


def _versions(context: ssl.SSLContext, keys: dict[str, yaml.Node],
              values: dict[str, str | None], problems: _Problems) -> None:
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        text = values.get(name)
        if text is None:
            continue
        if text not in _VERSIONS:
            problems.add(keys[name], f"tls_server_config.{name}", f"{text!r} is not one of "
                         + ", ".join(_VERSIONS))
            continue
        setattr(context, attr, _VERSIONS[text])


def _client_auth(context: ssl.SSLContext, keys: dict[str, yaml.Node],
                 values: dict[str, str | None], base: str, problems: _Problems) -> None:
    kind = values.get("client_auth_type") or "NoClientCert"
    if kind not in _CLIENT_AUTH:
        problems.add(keys.get("client_auth_type"), "tls_server_config.client_auth_type",
                     f"{kind!r} is not one of " + ", ".join(_CLIENT_AUTH))
        return
    context.verify_mode = _CLIENT_AUTH[kind]
    ca = values.get("client_ca_file")
    if kind != "NoClientCert" and ca is None:
        # Python's ssl always verifies a client certificate it asks for, so every mode that
        # asks needs the CA (RequireAnyClientCert behaves as RequireAndVerifyClientCert).
        problems.add(keys.get("client_auth_type"), "tls_server_config.client_ca_file",
                     f"{kind} needs `client_ca_file`, the CA that signs client certificates")
        return
    if ca is not None:
        try:
            context.load_verify_locations(os.path.join(base, ca))
        except (OSError, ssl.SSLError) as err:
            problems.add(keys["client_ca_file"], "tls_server_config.client_ca_file",
                         f"cannot load the CA: {err}")


class Authenticator:
    """Checks `Authorization: Basic` headers against the users; bcrypt off the event loop."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: OrderedDict[bytes, None] = OrderedDict()

    @property
    def required(self) -> bool:
        return bool(self.users)

    async def check(self, header: str) -> bool:
        if not self.users:
            return True
        user, password = _credentials(header)
        hashed = self.users.get(user or "")
        if user is None or password is None or hashed is None:
            return False
        digest = hashlib.sha256(hashed + b"\0" + user.encode() + b"\0" + password).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return True
        import bcrypt  # noqa: PLC0415  # ~0.5 MB, for a daemon with basic auth only

        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, bcrypt.checkpw, password, hashed):
            return False
        self._ok[digest] = None
        if len(self._ok) > _CACHE_SIZE:
            self._ok.popitem(last=False)
        return True


def _credentials(header: str) -> tuple[str | None, bytes | None]:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None, None
    return user.decode("utf-8", "replace"), password

