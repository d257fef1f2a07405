"""Networking: bridge networks, addresses, names, isolation, published ports, crash-safe
IPAM.  Real bridges and veths on this host (all named cbx*), traffic only to loopback
and to the containers' own namespaces."""

from __future__ import annotations

import json
import os
import signal
import socket
import selectors
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from engine.engine import Engine
from engine.errors import Conflict, InvalidArgument
from engine.network import ipam, networks

from .conftest import CHANBOX, FORKER, cli, needs_root

pytestmark = needs_root


@pytest.fixture
def net(image_root: str) -> Iterator[dict]:
    """A user network of its own (and its bridge), removed afterwards."""
    rec = networks.create(image_root, f"cbx-net-{os.getpid()}-{os.urandom(2).hex()}")
    yield rec
    networks.remove(image_root, rec["Name"])


def run_out(engine: Engine, cmd: list[str], image: str = "busybox", **kw: object) -> tuple[int, str]:
    """Run a container to its end; (exit code, its output)."""
    cid = engine.create(image, cmd, **kw)
    engine.start(cid)
    code = engine.wait(cid)
    out = "".join(e["log"] for e in engine.logs(cid))
    engine.rm(cid)
    return code, out


def detached(engine: Engine, cmd: list[str], **kw: object) -> str:
    cid = engine.create("busybox", cmd, **kw)
    engine.start(cid)
    return cid


def ip_of(engine: Engine, cid: str) -> str:
    return engine.inspect(cid)["NetworkSettings"]["IPAddress"]


def veths() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n.startswith("cbxv")}


SERVE = ["sh", "-c", "mkdir /www && echo hi-from-$(hostname) > /www/index.html && "
         "exec httpd -f -p 8000 -h /www"]


def test_default_bridge_gives_eth0_route_and_etc_files(engine: Engine) -> None:
    code, out = run_out(engine, ["sh", "-c", "ip -o -4 addr show eth0; ip route; "
                                 "cat /etc/hostname /etc/hosts /etc/resolv.conf"],
                        hostname="cbx-host1")
    assert code == 0, out
    info = networks.default_network()
    assert f"/{info['Subnet'].split('/')[1]}" in out
    assert f"default via {info['Gateway']} dev eth0" in out
    assert "cbx-host1\n" in out
    assert "127.0.0.1\tlocalhost" in out and "nameserver" in out


def test_the_etc_files_stay_out_of_the_writable_layer_diff_and_commit(engine: Engine) -> None:
    # As Docker's -init layer: the mount points of /etc/hosts, hostname and resolv.conf
    # are in a layer of the container's own under the writable one.
    cid = detached(engine, ["sh", "-c", "echo changed > /etc/motd; sleep 30"])
    img = None
    try:
        deadline = time.monotonic() + 10
        while not engine.changes(cid):
            assert time.monotonic() < deadline, "the container changed nothing"
            time.sleep(0.05)
        assert engine.changes(cid) == [{"Path": "/etc", "Kind": 0}, {"Path": "/etc/motd", "Kind": 1}]
        assert sorted(os.listdir(os.path.join(engine.containers.get(cid).path("upper"), "etc"))) \
            == ["motd"]
        img = engine.commit(cid, "cbx-init-layer:1")
        code, out = run_out(engine, ["sh", "-c", "ls /etc/hostname /etc/resolv.conf; cat /etc/motd"],
                            image="cbx-init-layer:1", network="none")
        assert "No such file" in out and out.count("No such file") == 2 and "changed" in out, out
    finally:
        engine.rm(cid, force=True)
        if img is not None:
            engine.rmi("cbx-init-layer:1")


def test_none_and_host_keep_working(engine: Engine) -> None:
    code, out = run_out(engine, ["ls", "/sys/class/net"], network="none")
    assert (code, out.split()) == (0, ["lo"])
    code, out = run_out(engine, ["ls", "/sys/class/net"], network="host")
    assert code == 0 and "eth0" in out.split() and "cbx0" in out.split()


def test_inspect_shows_docker_network_settings(engine: Engine) -> None:
    cid = detached(engine, ["sleep", "30"], ports=[
        {"host_ip": "127.0.0.1", "host_port": 0, "container_port": 80, "proto": "tcp"}])
    doc = engine.inspect(cid)
    ns, hc = doc["NetworkSettings"], doc["HostConfig"]
    assert hc["NetworkMode"] == "bridge"
    assert hc["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    info = networks.default_network()
    assert ns["Gateway"] == info["Gateway"] and ns["IPPrefixLen"] == 16
    ip = ns["IPAddress"]
    assert ns["MacAddress"] == "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
    port = ns["Ports"]["80/tcp"][0]
    assert port["HostIp"] == "127.0.0.1" and int(port["HostPort"]) > 0
    assert ns["Networks"]["bridge"]["IPAddress"] == ip
    assert ns["Networks"]["bridge"]["NetworkID"] == info["Id"]
    engine.rm(cid, force=True)


def test_containers_on_one_network_reach_each_other_by_name_and_alias(
        engine: Engine, net: dict) -> None:
    server = detached(engine, SERVE, name=f"cbx-srv-{os.getpid()}", network=net["Name"],
                      network_aliases=["cbx-web"])
    name = engine.inspect(server)["Name"].lstrip("/")
    code, out = run_out(engine, ["sh", "-c",
                                 f"ping -c1 -W2 {name} && for i in 1 2 3 4 5 6 7 8 9 10; do "
                                 f"wget -q -O - http://cbx-web:8000/ && exit 0; sleep 0.1; "
                                 "done; exit 1"], network=net["Name"])
    assert code == 0, out
    assert "1 packets received" in out
    assert f"hi-from-{server[:12]}" in out
    # the server learnt the client's name too (its hosts file is updated in place)
    c2 = detached(engine, ["sleep", "30"], name=f"cbx-cli-{os.getpid()}", network=net["Name"])
    hosts = cli(engine.root, "exec", server, "cat", "/etc/hosts").stdout.decode()
    assert f"cbx-cli-{os.getpid()}" in hosts
    engine.rm(c2, force=True)
    engine.rm(server, force=True)


def test_renaming_a_container_others_know_by_name_waits_for_it_to_stop(engine: Engine,
                                                                        net: dict) -> None:
    cid = detached(engine, ["sleep", "30"], name=f"cbx-ren-{os.getpid()}", network=net["Name"])
    try:
        with pytest.raises(Conflict, match="stop it before renaming"):
            engine.rename(cid, f"cbx-ren2-{os.getpid()}")
        engine.stop(cid, timeout=0)
        engine.rename(cid, f"cbx-ren2-{os.getpid()}")
        assert engine.inspect(cid)["Name"] == f"/cbx-ren2-{os.getpid()}"
    finally:
        engine.rm(cid, force=True)


def test_networks_are_isolated(engine: Engine, image_root: str, net: dict) -> None:
    other = networks.create(image_root, f"cbx-oth-{os.getpid()}")
    try:
        server = detached(engine, SERVE, network=net["Name"])
        ip = ip_of(engine, server)
        code, out = run_out(engine, ["sh", "-c", f"ping -c1 -W1 {ip}"], network=net["Name"])
        assert code == 0, out
        code, out = run_out(engine, ["sh", "-c", f"ping -c1 -W1 {ip}; "
                                     f"wget -q -T 1 -O - http://{ip}:8000/"],
                            network=other["Name"])
        assert code != 0 and "hi-from" not in out
        # and names of the other network do not resolve
        name = engine.inspect(server)["Name"].lstrip("/")
        code, out = run_out(engine, ["ping", "-c1", "-W1", name], network=other["Name"])
        assert code != 0
        engine.rm(server, force=True)
    finally:
        networks.remove(image_root, other["Name"])


def test_published_port_answers_on_loopback(engine: Engine) -> None:
    cid = detached(engine, SERVE, ports=[
        {"host_ip": "127.0.0.1", "host_port": 0, "container_port": 8000, "proto": "tcp"}])
    port = int(engine.inspect(cid)["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"])
    body = b""
    for _ in range(50):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            break
        except OSError:
            time.sleep(0.05)
    assert body == f"hi-from-{cid[:12]}\n".encode()
    engine.rm(cid, force=True)
    # the port is free again once the container is gone
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server does
        s.bind(("127.0.0.1", port))


def _serve_proxy(ports: list[dict], target: str) -> tuple[list[dict], threading.Event]:
    """The monitor's proxy in a selector loop of its own, forwarding to ``target``."""
    from engine.network.proxy import Proxy

    sel = selectors.DefaultSelector()
    proxy = Proxy(sel, target)
    bound = proxy.bind(ports)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, events in sel.select(0.05):
                key.data[1](key, events)
        proxy.close()

    threading.Thread(target=loop, daemon=True).start()
    return bound, stop


def test_proxy_udp_and_tcp_half_close_on_loopback() -> None:
    echo_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo_udp.bind(("127.0.0.1", 0))
    echo_tcp = socket.socket()
    echo_tcp.bind(("127.0.0.1", 0))
    echo_tcp.listen()

    def echo() -> None:
        data, addr = echo_udp.recvfrom(100)
        echo_udp.sendto(data.upper(), addr)
        conn, _ = echo_tcp.accept()
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        conn.sendall(got[::-1])
        conn.close()

    threading.Thread(target=echo, daemon=True).start()
    bound, stop = _serve_proxy([
        {"host_ip": "127.0.0.1", "host_port": 0, "proto": "udp",
         "container_port": echo_udp.getsockname()[1]},
        {"host_ip": "127.0.0.1", "host_port": 0, "proto": "tcp",
         "container_port": echo_tcp.getsockname()[1]}], "127.0.0.1")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"ping", ("127.0.0.1", bound[0]["host_port"]))
            assert c.recv(100) == b"PING"
        payload = os.urandom(1 << 20)  # more than one buffer: flow control both ways
        with socket.create_connection(("127.0.0.1", bound[1]["host_port"]), timeout=5) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)  # the half-close reaches the server...
            back = b""
            while chunk := c.recv(65536):
                back += chunk
        assert back == payload[::-1]  # ...and its answer still comes back
    finally:
        stop.set()
        echo_udp.close()
        echo_tcp.close()


def test_taken_host_port_is_refused_clearly(engine: Engine, image_root: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = cli(image_root, "run", "--rm", "-p", f"127.0.0.1:{port}:80", "busybox", "true")
        assert p.returncode == 125
        assert f"127.0.0.1:{port}/tcp" in p.stderr.decode()
        assert "already in use" in p.stderr.decode()
        cid = engine.create("busybox", ["true"], ports=[
            {"host_ip": "127.0.0.1", "host_port": port, "container_port": 80, "proto": "tcp"}])
        with pytest.raises(Conflict, match="already in use"):
            engine.start(cid)
        settings = json.load(open(engine.containers.get(cid).path("network.json")))
        assert not os.path.exists(settings["Lease"])  # the address went back
        engine.rm(cid)


def test_bad_network_arguments_are_refused(engine: Engine) -> None:
    with pytest.raises(InvalidArgument, match="not found"):
        engine.create("busybox", ["true"], network="cbx-no-such-net")
    with pytest.raises(InvalidArgument, match="cannot publish"):
        engine.create("busybox", ["true"], network="none", ports=[
            {"host_ip": "", "host_port": 1, "container_port": 80, "proto": "tcp"}])
    p = subprocess.run([CHANBOX, "create", "-p", "99999:80", "busybox"], capture_output=True)
    assert p.returncode == 125 and b"invalid -p" in p.stderr


def test_ipam_survives_engine_killed_mid_start(engine: Engine, image_root: str,
                                               net: dict) -> None:
    cid = engine.create("busybox", ["sleep", "30"], network=net["Name"])
    env = dict(os.environ, CHANBOX_FAILPOINT="start:leased")
    p = subprocess.run([CHANBOX, "--root", image_root, "start", cid], env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    leaked = set(ipam.holders(net["Bridge"]))
    assert len(leaked) == 1  # the dead engine's lease is still there, unheld
    others = [detached(engine, ["sleep", "30"], network=net["Name"]) for _ in range(3)]
    ips = [ip_of(engine, c) for c in others]
    assert len(set(ips)) == 3 and not leaked & set(ips)  # never handed out twice
    assert ipam.reclaim(net["Bridge"]) == 1  # the unheld one goes; held ones stay
    assert set(ipam.holders(net["Bridge"])) == set(ips)
    engine.start(cid)  # the crashed container starts fine afterwards
    assert ip_of(engine, cid) not in ips
    for c in [cid, *others]:
        engine.rm(c, force=True)
    assert ipam.holders(net["Bridge"]) == {}


def test_network_cli(image_root: str) -> None:
    name = f"cbx-cli-net-{os.getpid()}"
    p = cli(image_root, "network", "create", "--subnet", "10.89.250.0/24", name)
    assert p.returncode == 0, p.stderr
    try:
        ls = cli(image_root, "network", "ls").stdout.decode()
        assert name in ls and "10.89.250.0/24" in ls and "bridge" in ls
        p = cli(image_root, "network", "create", name)
        assert p.returncode == 125 and b"already exists" in p.stderr
        # overlapping a route of the host (here: our own bridge's) is refused
        p = cli(image_root, "network", "create", "--subnet", "10.89.250.128/25", "cbx-ov")
        assert p.returncode == 125 and b"overlaps" in p.stderr
        cid = cli(image_root, "run", "-d", "--network", name, "busybox", "sleep", "30")
        cid_s = cid.stdout.decode().strip()
        doc = json.loads(cli(image_root, "network", "inspect", name).stdout)[0]
        assert doc["IPAM"]["Config"] == [{"Subnet": "10.89.250.0/24", "Gateway": "10.89.250.1"}]
        assert doc["Containers"][cid_s]["IPv4Address"].startswith("10.89.250.")
        p = cli(image_root, "network", "rm", name)
        assert p.returncode == 125 and b"has containers" in p.stderr
        cli(image_root, "rm", "-f", cid_s)
    finally:
        p = cli(image_root, "network", "rm", name)
    assert p.returncode == 0, p.stderr
    assert not os.path.exists(f"/sys/class/net/{doc['Options']['com.chanbox.bridge.name']}")


def test_teardown_leaves_no_veth_or_lease(engine: Engine) -> None:
    before = veths()
    info = networks.default_network()
    cids = [detached(engine, ["sleep", "30"]) for _ in range(5)]
    ips = {ip_of(engine, c) for c in cids}
    assert len(ips) == 5 and ips <= set(ipam.holders(info["Bridge"]))
    assert len(veths() - before) == 5
    for c in cids:
        engine.rm(c, force=True)
    deadline = time.monotonic() + 5
    while veths() - before and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel dismantles a dead netns asynchronously
    assert veths() - before == set()
    assert not ips & set(ipam.holders(info["Bridge"]))


def test_forkserver_engine_does_not_import_pyroute2() -> None:
    code = ("import sys, engine.cli, engine.engine, engine.runtime, engine.monitor, "
            "engine.network.attach; print('pyroute2' in sys.modules)")
    out = subprocess.run([os.path.join(os.path.dirname(CHANBOX), "python"), "-c", code],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


assert FORKER  # the shared fork server (forked before any thread)
