"""Real discovery servers for the bridges' tests, started on loopback in temp dirs.

Debian's etcd-server, serf and zookeeper, each as a child process of the test run on
free ports of 127.0.0.1; :meth:`stop` ends exactly the processes started here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time

from engine import fsutil
from tests.procs import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port} within {timeout} s")


class Server:
    """A child process with a temp dir of its own."""

    def __init__(self, prefix: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"cbx-{prefix}-")
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict | None = None) -> None:
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        self.log.close()
        fsutil.remove_tree(self.dir)


class Etcd(Server):
    """One etcd member (``cluster`` names all members as name=peer-url)."""

    def __init__(self, name: str = "cbx0", client_port: int | None = None,
                 peer_port: int | None = None, cluster: str | None = None,
                 fast: bool = False) -> None:
        super().__init__("etcd")
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.cluster = cluster or f"{name}=http://127.0.0.1:{self.peer_port}"
        self.fast = fast
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, state: str = "new") -> None:
        argv = ["etcd", "--name", self.name, "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", self.cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", "cbx-test"]
        if self.fast:
            argv += ["--heartbeat-interval", "20", "--election-timeout", "200"]
        self._spawn(argv)
        wait_port(self.client_port, self.proc, "etcd")


class ZooKeeper(Server):
    """A standalone ZooKeeper server."""

    def __init__(self) -> None:
        super().__init__("zk")
        self.port = free_port()
        conf = os.path.join(self.dir, "zoo.cfg")
        with open(conf, "w") as f:
            f.write(f"tickTime=200\ndataDir={self.dir}/data\nclientPort={self.port}\n"
                    "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                    "minSessionTimeout=400\nmaxSessionTimeout=20000\n"
                    "4lw.commands.whitelist=ruok\n")
        self.conf = conf
        self.start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # Debian's zookeeper.jar names its dependencies in its manifest
        self._spawn(["java", "-Xmx128m", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
                     "-cp", "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar",
                     "-Dzookeeper.log.dir=" + self.dir, "-Dzookeeper.root.logger=WARN,CONSOLE",
                     "org.apache.zookeeper.server.quorum.QuorumPeerMain", self.conf])
        wait_port(self.port, self.proc, "zookeeper", timeout=60)
        self._wait_serving(timeout=60)

    def _wait_serving(self, timeout: float) -> None:
        # The port opens while the JVM is still setting the server up; a client's
        # session then times out on a loaded machine.  "ruok" answers "imok" once it serves.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, "zookeeper exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"ruok")
                    if s.recv(16) == b"imok":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"zookeeper did not serve on {self.port} within {timeout} s")


class Serf(Server):
    """A serf agent with its RPC on loopback."""

    def __init__(self, node: str = "cbx-serf0") -> None:
        super().__init__("serf")
        self.node = node
        self.rpc_port = free_port()
        self.bind_port = free_port()
        self.start()

    @property
    def rpc(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        self._spawn(["serf", "agent", "-node", self.node, "-bind", f"127.0.0.1:{self.bind_port}",
                     "-rpc-addr", self.rpc, "-log-level", "warn"])
        wait_port(self.rpc_port, self.proc, "serf")
