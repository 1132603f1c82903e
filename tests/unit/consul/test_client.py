"""The Consul client, against httpx's mock transport: URLs, headers, status codes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from opensmtpd.consul.client import ConsulClient, ConsulError
from opensmtpd.consul.config import Config, ConfigError, load

SECRET = "0a1b2c3d-aaaa-4bbb-8ccc-0123456789ab"
Handler = Callable[[httpx.Request], httpx.Response]


def kv(*pairs: tuple[str, bytes | None]) -> bytes:
    return json.dumps([{"Key": k, "Value": None if v is None else base64.b64encode(v).decode(),
                        "CreateIndex": 1, "ModifyIndex": 2, "LockIndex": 0, "Flags": 0}
                       for k, v in pairs]).encode()


def client(handler: Handler, env: dict[str, str] | None = None,
           conf: str | None = None, tmp_path: Path | None = None) -> ConsulClient:
    path = None
    if conf is not None:
        assert tmp_path is not None
        path = tmp_path / "c.conf"
        path.write_text(conf)
    config: Config = load(path, env={"CONSUL_HTTP_ADDR": "127.0.0.1:8500", **(env or {})})
    return ConsulClient(config, transport=httpx.MockTransport(handler))


def test_list_is_a_recursive_read_with_index_and_values() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"X-Consul-Index": "42"},
                              content=kv(("aliases/alias/root", b"gilles"),
                                         ("aliases/domain/x", None)))

    listing = client(handler).list("aliases/")
    assert listing.index == 42
    assert listing.items == (("aliases/alias/root", b"gilles"), ("aliases/domain/x", None))
    url = seen[0].url
    assert url.path == "/v1/kv/aliases/"
    assert "recurse" in url.params and "stale" in url.params  # stale: the default mode
    assert "index" not in url.params and "wait" not in url.params


def test_last_contact_is_the_lag_of_a_stale_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"X-Consul-Index": "5",
                                            "X-Consul-LastContact": "2500"}, content=kv())

    assert client(handler).list("t/").lag == 2.5
    assert client(lambda r: httpx.Response(404, headers={"X-Consul-Index": "5"})).list(
        "t/").lag == 0.0


def test_blocking_query_parameters_and_read_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"X-Consul-Index": "43"}, content=kv())

    client(handler).list("aliases/", index=42, wait=60)
    params = seen[0].url.params
    assert params["index"] == "42" and params["wait"] == "60000ms"
    assert seen[0].extensions["timeout"]["read"] == pytest.approx(60 * 17 / 16 + 5)


def test_datacenter_and_consistency(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, headers={"X-Consul-Index": "7"})

    c = client(handler, conf="datacenter = dc2\nconsistency = consistent\n", tmp_path=tmp_path)
    assert c.list("t/").items == ()
    params = seen[0].url.params
    assert params["dc"] == "dc2" and "consistent" in params and "stale" not in params
    c = client(handler, conf="consistency = default\n", tmp_path=tmp_path)
    c.list("t/")
    assert not {"stale", "consistent"} & set(seen[1].url.params)


def test_token_only_in_the_header(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PUT":
            return httpx.Response(200, content=b"true")
        return httpx.Response(200, headers={"X-Consul-Index": "1"}, content=kv())

    c = client(handler, env={"CONSUL_HTTP_TOKEN": SECRET})
    c.list("t/", index=3, wait=1)
    c.put("t/alias/root", b"gilles")
    c.get("t/alias/root")
    c.delete("t/alias/root")
    for request in seen:
        assert request.headers["X-Consul-Token"] == SECRET
        assert SECRET not in str(request.url)
    assert SECRET not in repr(c._http.headers)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    c = client(handler, conf=f"token_file = {token_file}\n", tmp_path=tmp_path,
               env={"CONSUL_HTTP_TOKEN": SECRET})
    c.list("t/")
    assert seen[-1].headers["X-Consul-Token"] == "from-file"
    token_file.write_text("rotated\n")
    c.refresh_token()
    c.list("t/")
    assert seen[-1].headers["X-Consul-Token"] == "rotated"


def test_no_token_no_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, headers={"X-Consul-Index": "1"})

    client(handler).list("t/")
    assert "X-Consul-Token" not in seen[0].headers


@pytest.mark.parametrize(("response", "message"), [
    (httpx.Response(403, text="ACL not found"), "permission denied by Consul ACLs (ACL not found)"),
    (httpx.Response(500, text="No cluster leader"),
     "HTTP 500 Internal Server Error: No cluster leader"),
    (httpx.Response(200, content=b"[]"), "no valid X-Consul-Index"),
    (httpx.Response(200, headers={"X-Consul-Index": "x"}, content=b"[]"), "X-Consul-Index"),
    (httpx.Response(200, headers={"X-Consul-Index": "1"}, content=b"{not json"), "malformed"),
    (httpx.Response(200, headers={"X-Consul-Index": "1"}, content=b'{"Key": 1}'), "malformed"),
    (httpx.Response(200, headers={"X-Consul-Index": "1"},
                    content=b'[{"Key": "k", "Value": "!!notbase64"}]'), "malformed"),
    (httpx.Response(200, headers={"X-Consul-Index": "1",
                                  "X-Consul-Results-Filtered-By-ACLs": "true"}, content=kv()),
     "cannot read every key"),
])
def test_failures_are_consul_errors(response: httpx.Response, message: str) -> None:
    with pytest.raises(ConsulError, match=message.replace("(", r"\(").replace(")", r"\)")):
        client(lambda request: response).list("t/")


def test_transport_errors_are_consul_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ConsulError, match=r"connection refused by .* \(ConnectError\)"):
        client(refuse).list("t/")
    with pytest.raises(ConsulError, match="timed out"):
        client(slow).list("t/", index=2, wait=1)


def test_get_put_delete() -> None:
    store: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.url.path.removeprefix("/v1/kv/")
        if request.method == "PUT":
            store[key] = request.content
            return httpx.Response(200, content=b"true")
        if request.method == "DELETE":
            if "recurse" in request.url.params:
                for k in [k for k in store if k.startswith(key)]:
                    del store[k]
            else:
                store.pop(key, None)
            return httpx.Response(200, content=b"true")
        if key not in store:
            return httpx.Response(404, headers={"X-Consul-Index": "1"})
        return httpx.Response(200, headers={"X-Consul-Index": "1"}, content=kv((key, store[key])))

    c = client(handler)
    c.put("t/alias/root", b"gilles")
    c.put("t/alias/a b", b"spaced")          # quoted in the URL, stored as is
    assert c.get("t/alias/root") == b"gilles" and c.get("t/alias/a b") == b"spaced"
    c.delete("t/alias/root")
    assert c.get("t/alias/root") is None
    c.delete("t/", recurse=True)
    assert store == {}


def test_put_refused_is_an_error() -> None:
    with pytest.raises(ConsulError, match="permission denied"):
        client(lambda r: httpx.Response(403, text="Permission denied")).put("k", b"v")
    with pytest.raises(ConsulError, match="PUT"):
        client(lambda r: httpx.Response(200, content=b"false")).put("k", b"v")


def test_unix_socket_address_and_tls_errors(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, headers={"X-Consul-Index": "1"})

    client(handler, env={"CONSUL_HTTP_ADDR": "unix:///run/consul.sock"}).list("t/")
    assert seen[0].url.host == "consul"
    with pytest.raises(ConfigError, match="TLS settings"):
        client(handler, env={"CONSUL_HTTP_SSL": "true",
                             "CONSUL_CACERT": str(tmp_path / "missing.pem")})
