"""Run real Consul agents for tests and benchmarks: a dev agent, ACLs on, a 3-server cluster.

The binary is Debian bullseye's ``consul`` 1.8.7, unpacked by ``make consul`` into
``build/consul`` (or ``$PYOS_CONSUL``). Every agent binds and listens on 127.0.0.1 only,
on free ports (HTTP, server RPC, serf LAN/WAN; DNS and gRPC off), keeps its data in a
directory of the caller's, and is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .smtpd import free_port

REPO = Path(__file__).resolve().parents[2]
RAFT_FAST = 'performance { raft_multiplier = 1 }'


def consul_binary() -> Path:
    """The consul executable; FileNotFoundError says how to get it."""
    candidates = [os.environ.get("PYOS_CONSUL", ""), str(REPO / "build/consul/usr/bin/consul")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("consul")
    if found:
        return Path(found)
    raise FileNotFoundError("no consul binary: run 'make consul' (Debian bullseye's consul "
                            "1.8.7 into build/consul) or set PYOS_CONSUL")


class ConsulHTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


@dataclass
class Agent:
    """One consul agent process on loopback."""

    name: str
    directory: Path
    extra: list[str] = field(default_factory=list)
    dev: bool = True
    http_port: int = field(default_factory=free_port)
    server_port: int = field(default_factory=free_port)
    serf_lan_port: int = field(default_factory=free_port)
    serf_wan_port: int = field(default_factory=free_port)
    token: str | None = None  # management token for the harness's own calls (ACL agents)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def command(self) -> list[str]:
        data = self.directory / f"{self.name}-data"
        base = [str(consul_binary()), "agent", "-node", self.name,
                "-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
                "-http-port", str(self.http_port), "-server-port", str(self.server_port),
                "-serf-lan-port", str(self.serf_lan_port),
                "-serf-wan-port", str(self.serf_wan_port),
                "-dns-port", "-1", "-grpc-port", "-1", "-hcl", RAFT_FAST]
        if self.dev:
            base.append("-dev")
        else:
            data.mkdir(parents=True, exist_ok=True)
            base += ["-server", "-data-dir", str(data)]
        return base + self.extra

    def start(self, *, wait_leader: bool = True, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(self.command(), stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_leader:
            self.wait_leader(timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_leader(self, timeout: float = 60.0) -> str:
        """Wait until this agent knows a leader (and accepts writes with ACLs on)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"consul {self.name} exited:\n{self.log()}")
            try:
                leader = self.leader()
                if leader:
                    if self.token is not None:  # ACL bootstrap lags the election a little
                        self.request("GET", "/v1/acl/token/self")
                    return leader
            except (OSError, ConsulHTTPError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"consul {self.name}: no leader within {timeout:g}s ({last}):\n"
                           f"{self.log()}")

    def leader(self) -> str:
        return str(json.loads(self.request("GET", "/v1/status/leader", token=False)))

    def request(self, method: str, path: str, body: bytes | None = None, *,
                token: bool | str = True, timeout: float = 10.0) -> bytes:
        headers = {}
        chosen = self.token if token is True else (token or None)
        if chosen:
            headers["X-Consul-Token"] = chosen
        request = urllib.request.Request(f"http://{self.address}{path}", data=body,
                                         method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise ConsulHTTPError(exc.code, exc.read().decode(errors="replace")) from None

    def put(self, key: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        if self.request("PUT", f"/v1/kv/{key}", data).strip() != b"true":
            raise RuntimeError(f"PUT {key} refused")

    def index(self, prefix: str) -> int:
        """X-Consul-Index of a (stale) recursive read of ``prefix``."""
        headers = {"X-Consul-Token": self.token} if self.token else {}
        request = urllib.request.Request(
            f"http://{self.address}/v1/kv/{prefix}?recurse&stale", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.headers["X-Consul-Index"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return int(exc.headers["X-Consul-Index"])
            raise ConsulHTTPError(exc.code, exc.read().decode(errors="replace")) from None

    def delete(self, key: str) -> None:
        self.request("DELETE", f"/v1/kv/{key}")

    def create_token(self, rules: str, name: str = "table-consul") -> str:
        """A token with a new policy of ``rules`` (HCL); returns its SecretID."""
        policy = json.dumps({"Name": name, "Rules": rules}).encode()
        self.request("PUT", "/v1/acl/policy", policy)
        token = json.dumps({"Policies": [{"Name": name}]}).encode()
        data: Any = json.loads(self.request("PUT", "/v1/acl/token", token))
        return str(data["SecretID"])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL (a crash: no graceful leave)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def dev_agent(directory: Path, *, acl_token: str | None = None, name: str = "dev") -> Agent:
    """A single in-memory dev agent; with ``acl_token``, ACLs on (default deny) with that
    management token."""
    extra = []
    if acl_token is not None:
        extra = ["-hcl", 'acl { enabled = true default_policy = "deny" '
                 f'enable_token_persistence = false tokens {{ master = "{acl_token}" }} }}']
    return Agent(name, directory, extra, token=acl_token)


@dataclass
class Cluster:
    """Three (or n) servers on loopback that elect a leader among themselves."""

    agents: list[Agent]

    def start(self, timeout: float = 90.0) -> None:
        for agent in self.agents:
            agent.start(wait_leader=False)
        for agent in self.agents:
            agent.wait_leader(timeout)

    def leader(self) -> Agent:
        for agent in self.agents:
            if agent.running():
                with contextlib.suppress(OSError, ConsulHTTPError, ValueError):
                    address = agent.leader()
                    for candidate in self.agents:
                        if address.endswith(f":{candidate.server_port}"):
                            return candidate
        raise RuntimeError("no leader")

    def followers(self) -> list[Agent]:
        leader = self.leader()
        return [a for a in self.agents if a is not leader and a.running()]

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()


def cluster(directory: Path, size: int = 3) -> Cluster:
    agents = [Agent(f"server{i}", directory, dev=False) for i in range(size)]
    for agent in agents:
        agent.extra = ["-bootstrap-expect", str(size)]
        for other in agents:
            if other is not agent:
                agent.extra += ["-retry-join", f"127.0.0.1:{other.serf_lan_port}"]
    return Cluster(agents)
