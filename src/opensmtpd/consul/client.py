"""A small Consul KV client over httpx: prefix reads with blocking queries, get/put/delete.

Blocking queries (Consul's API docs, "Blocking Queries"): ``GET /v1/kv/<prefix>?recurse
&index=<X-Consul-Index>&wait=<d>`` returns when something under the prefix changed or
after ``wait`` plus up to wait/16 of jitter. A prefix with no key is a 404 that still
carries X-Consul-Index. With ACLs on, a list is *filtered* (a token without read access
gets a 404, not a 403): the replica treats an empty table as an error by default.

The ACL token travels in the ``X-Consul-Token`` header only: never in the URL (no
``?token=``), never in the client's default headers (whose repr could be logged).
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from .config import Config, ConfigError
from .listing import Listing

USER_AGENT = "table-consul (py-opensmtpd)"


class ConsulError(Exception):
    """Consul could not give a definite answer (unreachable, refused, malformed)."""


def ssl_context(config: Config) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=config.ca_file, capath=config.ca_path)
        if not config.ssl_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.client_cert is not None:
            context.load_cert_chain(config.client_cert, config.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS settings (ca_file, ca_path, client_cert, client_key): "
                          f"{exc}") from None
    return context


def _kv_path(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="/")


class ConsulClient:
    """Talks to one Consul agent's HTTP API as configured (address, TLS, dc, consistency)."""

    def __init__(self, config: Config, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        base_url = config.address
        if base_url.startswith("unix://"):
            transport = transport or httpx.HTTPTransport(uds=base_url[len("unix://"):])
            base_url = "http://consul"
        verify: ssl.SSLContext | bool = (ssl_context(config) if base_url.startswith("https:")
                                         else True)
        self._token = config.token()
        self._http = httpx.Client(base_url=base_url, verify=verify, transport=transport,
                                  timeout=config.timeout, trust_env=False,
                                  headers={"User-Agent": USER_AGENT})

    def refresh_token(self) -> None:
        """Re-read the token (a rotated token file) — on ``smtpctl update table``."""
        self._token = self.config.token()

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.config.datacenter:
            params["dc"] = self.config.datacenter
        if self.config.consistency != "default":
            params[self.config.consistency] = ""
        return params

    def _headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self._token} if self._token else {}

    @contextmanager
    def _errors(self, what: str, read_timeout: float) -> Iterator[None]:
        where = self.config.address
        try:
            yield
        except httpx.ConnectTimeout as exc:
            raise ConsulError(f"{what}: no connection to Consul at {where} within "
                              f"{self.config.timeout:g}s ({type(exc).__name__})") from None
        except httpx.TimeoutException as exc:
            raise ConsulError(f"{what}: timed out: no answer from Consul at {where} within "
                              f"{read_timeout:g}s ({type(exc).__name__})") from None
        except httpx.ConnectError as exc:
            if "refused" in str(exc).lower():  # ECONNREFUSED: nothing listens there
                raise ConsulError(f"{what}: connection refused by {where} "
                                  f"({type(exc).__name__}): is the Consul agent running and "
                                  "listening there?") from None
            raise ConsulError(f"{what}: cannot connect to Consul at {where}: "
                              f"{type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ConsulError(f"{what}: {type(exc).__name__}: {exc}") from None

    def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                 content: bytes | None = None, read_timeout: float | None = None,
                 ) -> httpx.Response:
        read = read_timeout or self.config.timeout
        timeout = httpx.Timeout(self.config.timeout, read=read)
        with self._errors(f"{method} {path}", read):
            return self._http.request(method, path, params=params, content=content,
                                      headers=self._headers(), timeout=timeout)

    @staticmethod
    def _failure(response: httpx.Response, what: str) -> ConsulError:
        body = response.text.strip().replace("\n", " ")[:200]
        if response.status_code == 403:
            return ConsulError(f"{what}: permission denied by Consul ACLs ({body or '403'}); "
                               "check the token (token_file, CONSUL_HTTP_TOKEN)")
        return ConsulError(f"{what}: Consul answered HTTP {response.status_code} "
                           f"{response.reason_phrase}: {body}".rstrip(": "))

    def list(self, prefix: str, *, index: int = 0, wait: float | None = None) -> Listing:
        """Every key under ``prefix``; with ``index`` > 0 and ``wait``, a blocking query."""
        params = {"recurse": "", **self._params()}
        read_timeout = None
        if index > 0 and wait:
            params["index"] = str(index)
            params["wait"] = f"{int(wait * 1000)}ms"
            read_timeout = wait * 17 / 16 + self.config.timeout
        path = _kv_path(prefix)
        response = self._request("GET", path, params=params, read_timeout=read_timeout)
        what = f"GET {path}"
        if response.status_code not in (200, 404):
            raise self._failure(response, what)
        if response.headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            raise ConsulError(f"{what}: the ACL token cannot read every key under {prefix!r}")
        try:
            new_index = int(response.headers["X-Consul-Index"])
        except (KeyError, ValueError):
            raise ConsulError(f"{what}: no valid X-Consul-Index header") from None
        lag = _last_contact(response)
        if response.status_code == 404:
            return Listing(new_index, (), lag)
        return Listing(new_index, _decode_items(response.content, what), lag)

    def get(self, key: str) -> bytes | None:
        path = _kv_path(key)
        response = self._request("GET", path, params=self._params())
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._failure(response, f"GET {path}")
        items = _decode_items(response.content, f"GET {path}")
        return items[0][1] if items else None

    def put(self, key: str, value: bytes) -> None:
        path = _kv_path(key)
        params = {"dc": self.config.datacenter} if self.config.datacenter else None
        response = self._request("PUT", path, params=params, content=value)
        if response.status_code != 200 or response.text.strip() != "true":
            raise self._failure(response, f"PUT {path}")

    def delete(self, key: str, *, recurse: bool = False) -> None:
        path = _kv_path(key)
        params = {"dc": self.config.datacenter} if self.config.datacenter else {}
        if recurse:
            params["recurse"] = ""
        response = self._request("DELETE", path, params=params)
        if response.status_code != 200:
            raise self._failure(response, f"DELETE {path}")

    def close(self) -> None:
        self._http.close()


def _last_contact(response: httpx.Response) -> float:
    """X-Consul-LastContact (ms): how stale a stale read may be; 0 when absent."""
    try:
        return max(0, int(response.headers.get("X-Consul-LastContact", "0"))) / 1000
    except ValueError:
        return 0.0


def _decode_items(content: bytes, what: str) -> tuple[tuple[str, bytes | None], ...]:
    try:
        entries: Any = json.loads(content)
        if not isinstance(entries, list):
            raise ValueError("not a list")
        items = []
        for entry in entries:
            key, value = entry["Key"], entry.get("Value")
            if not isinstance(key, str) or not isinstance(value, (str, type(None))):
                raise ValueError("Key must be a string, Value a string or null")
            items.append((key, None if value is None else base64.b64decode(value,
                                                                           validate=True)))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ConsulError(f"{what}: malformed KV listing ({exc})") from None
    return tuple(items)
