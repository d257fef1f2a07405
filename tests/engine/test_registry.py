"""engine.distribution: pull and push against a real registry (Debian's docker-registry,
the distribution registry 2.8) started on loopback, with and without token auth."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from engine import fsutil
from engine.distribution import RegistryError, Unauthorized, parse_remote
from engine.errors import NotFound
from engine.images import ImageStore

from .conftest import CHANBOX, cli

REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(REGISTRY is None, reason="needs Debian's docker-registry "
                                "(apt-get install docker-registry)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A docker-registry process on 127.0.0.1 with its config and storage in a temp dir."""

    def __init__(self, auth: str = "") -> None:
        self.dir = tempfile.mkdtemp(prefix="cbx-registry-")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        with open(os.path.join(self.dir, "config.yml"), "w") as f:
            f.write(f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n"
                    f"storage: {{filesystem: {{rootdirectory: {self.dir}/data}}, delete: {{enabled: true}}}}\n"
                    f"http: {{addr: '{self.host}'}}\n{auth}")
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.proc = subprocess.Popen([REGISTRY, "serve", os.path.join(self.dir, "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("docker-registry did not start")
                time.sleep(0.05)

    def blob_path(self, digest: str) -> str:
        hexd = digest[7:]
        return os.path.join(self.dir, "data/docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        fsutil.remove_tree(self.dir)


class TokenServer:
    """Docker's token protocol: checks Basic credentials and signs an RS256 JWT granting
    the scope asked for (openssl signs; the registry trusts the certificate)."""

    def __init__(self, user: str, password: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="cbx-token-")
        self.key, self.cert = os.path.join(self.dir, "key.pem"), os.path.join(self.dir, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                        "-out", self.cert, "-days", "2", "-subj", "/CN=cbx-token"],
                       check=True, capture_output=True)
        pub = subprocess.run(f"openssl x509 -in {self.cert} -pubkey -noout | openssl pkey -pubin -outform DER",
                             shell=True, check=True, capture_output=True).stdout
        b32 = base64.b32encode(hashlib.sha256(pub).digest()[:30]).decode()
        self.kid = ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))  # libtrust's key id
        self.good = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.issued = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                if self.headers.get("Authorization") != server.good:
                    self.send_response(401)
                    self.end_headers()
                    return
                q = parse_qs(urlsplit(self.path).query)
                body = json.dumps({"token": server.token(q.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scopes: list[str]) -> str:
        def b64(obj: object) -> str:
            raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        access = []
        for scope in " ".join(scopes).split():
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "cbx-issuer", "sub": "cbx", "aud": "cbx-registry", "exp": now + 600,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{b64({'typ': 'JWT', 'alg': 'RS256', 'kid': self.kid})}.{b64(claims)}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=signing.encode(),
                             check=True, capture_output=True).stdout
        self.issued += 1
        return f"{signing}.{b64(sig)}"

    def auth_config(self) -> str:
        return (f"auth: {{token: {{realm: '{self.realm}', service: cbx-registry, issuer: cbx-issuer, "
                f"rootcertbundle: '{self.cert}'}}}}\n")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        fsutil.remove_tree(self.dir)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.close()



def make_image(store: ImageStore, ref: str, files: dict[str, bytes], tmp: str, parent: str | None = None) -> str:
    """An image of ``files`` (a child of ``parent`` if given) tagged ``ref``; its id."""
    src = tempfile.mkdtemp(prefix="cbx-src-", dir=tmp)
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(src, name)), exist_ok=True)
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
    if parent is None:
        return store.import_path(src, ref, config={"Cmd": ["/bin/sh"], "Env": ["A=1"]}).id
    return store.commit(src, store.get(parent), ref, config=None).id


def test_reference_names_are_normalised_like_docker() -> None:
    r = parse_remote("busybox")
    assert (r.registry, r.repository, r.tag, r.api_host, r.local) == \
        ("docker.io", "library/busybox", "latest", "registry-1.docker.io", "busybox:latest")
    assert parse_remote("docker.io/library/busybox:1.36").local == "busybox:1.36"
    assert parse_remote("index.docker.io/team/app").local == "team/app:latest"
    assert parse_remote("team/app:v2").repository == "team/app"
    r = parse_remote("localhost:5000/a/b/c:t")
    assert (r.registry, r.repository, r.tag, r.local) == ("localhost:5000", "a/b/c", "t", "localhost:5000/a/b/c:t")
    r = parse_remote("127.0.0.1:5000/x@sha256:" + "a" * 64)
    assert r.tag is None and r.reference == "sha256:" + "a" * 64
    with pytest.raises(Exception, match="lowercase"):
        parse_remote("Team/App")


def test_push_then_pull_on_an_empty_root_streams_progress_and_the_image_runs(registry: Registry, tmp: str, empty_root: str) -> None:
    from engine.client import embedded

    src = ImageStore(f"{tmp}/src")
    ref = f"{registry.host}/cbx/base:v1"
    base = make_image(src, ref, {"etc/motd": b"hello\n", "big": os.urandom(3 << 20)}, tmp)
    client, engine = embedded(f"{tmp}/src", spawn=False)
    try:
        msgs = list(client.stream("push", ref=ref, insecure=True))
    finally:
        client.close()
    assert msgs[-1]["id"] == base and msgs[-1]["ref"] == ref and msgs[-1]["digest"].startswith("sha256:")
    assert {m["status"] for m in msgs[:-1]} >= {"Pushed"}
    assert all(set(m) == {"layer", "status", "current", "total"} for m in msgs[:-1])

    client, engine = embedded(empty_root, spawn=False)
    try:
        msgs = list(client.stream("pull", ref=ref, insecure=True))
        assert msgs[-1] == {"id": msgs[-1]["id"], "ref": ref}
        statuses = [m["status"] for m in msgs[:-1]]
        assert statuses[-1] == "Pull complete" and "Downloading" in statuses
        assert msgs[-2]["current"] == msgs[-2]["total"] > 1 << 20
        img = engine.images.get(ref)
        assert img.config["Cmd"] == ["/bin/sh"] and img.config["Env"] == ["A=1"]
        # pushing the same content again: every blob is already there
        again = list(client.stream("push", ref=ref, insecure=True))
        assert [m["status"] for m in again[:-1]] == ["Layer already exists"]
    finally:
        client.close()
    with open(os.path.join(ImageStore(empty_root).layers.path(img.layers[0]), "etc/motd"), "rb") as f:
        assert f.read() == b"hello\n"
    assert ImageStore(empty_root).get(ref).layers == src.get(base).layers


def test_pull_skips_present_layers_and_the_cli_prints_one_summary_line(registry: Registry, tmp: str) -> None:
    src = ImageStore(f"{tmp}/src")
    base_ref, child_ref = f"{registry.host}/cbx/chain:base", f"{registry.host}/cbx/chain:child"
    make_image(src, base_ref, {"a": b"a" * 1000}, tmp)
    make_image(src, child_ref, {"b": b"b" * 1000}, tmp, parent=base_ref)
    for ref in (base_ref, child_ref):
        p = cli(f"{tmp}/src", "push", "--insecure", ref)
        assert p.returncode == 0, p.stderr
    p = cli(f"{tmp}/dst", "pull", "--insecure", base_ref)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == [p.stdout.decode().strip()]  # not a tty: one line
    assert "1 layers (1 downloaded, 0 already there)" in p.stdout.decode()
    p = cli(f"{tmp}/dst", "pull", "--insecure", child_ref)
    assert p.returncode == 0, p.stderr
    assert "2 layers (1 downloaded, 1 already there)" in p.stdout.decode(), p.stdout
    p = cli(f"{tmp}/dst", "pull", "--insecure", child_ref)
    assert "2 layers (0 downloaded, 2 already there)" in p.stdout.decode(), p.stdout


def test_two_pulls_at_once_download_each_layer_once(registry: Registry, tmp: str) -> None:
    src = ImageStore(f"{tmp}/src")
    ref = f"{registry.host}/cbx/race:v1"
    make_image(src, ref, {f"f{i}": os.urandom(1 << 20) for i in range(8)}, tmp)
    assert cli(f"{tmp}/src", "push", "--insecure", ref).returncode == 0
    os.makedirs(f"{tmp}/dst")
    procs = [subprocess.Popen([CHANBOX, "--root", f"{tmp}/dst", "pull", "--insecure", ref],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    text = " ".join(o[0].decode() for o in outs)
    assert text.count("(1 downloaded") == 1 and text.count("(0 downloaded, 1 already there)") == 1, text
    store = ImageStore(f"{tmp}/dst")
    assert len(store.layers.all()) == 1 and store.get(ref).id == src.get(ref).id


def test_a_corrupted_blob_is_refused_and_leaves_nothing(registry: Registry, tmp: str) -> None:
    src = ImageStore(f"{tmp}/src")
    ref = f"{registry.host}/cbx/bad:v1"
    make_image(src, ref, {"x": os.urandom(200_000)}, tmp)
    assert cli(f"{tmp}/src", "push", "--insecure", ref).returncode == 0
    digest = src.layers.exported(src.get(ref).layers[0], compress=True)["digest"]
    path = registry.blob_path(digest)
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    p = cli(f"{tmp}/dst", "pull", "--insecure", ref)
    assert p.returncode == 125
    err = p.stderr.decode()
    assert digest in err or "diff id" in err or "not a valid layer" in err, err
    dst = ImageStore(f"{tmp}/dst")
    assert dst.list() == [] and dst.layers.all() == []
    assert os.listdir(f"{tmp}/dst/tmp") == []


def test_errors_name_what_went_wrong(registry: Registry, tmp: str) -> None:
    from engine.distribution import pull

    store = ImageStore(f"{tmp}/dst")
    with pytest.raises(NotFound, match="check the name and tag"):
        pull(store, f"{registry.host}/cbx/nothing:here", insecure=True)
    with pytest.raises(RegistryError, match="--insecure"):
        pull(store, f"{registry.host}/cbx/nothing:here", insecure=False)
    with pytest.raises(RegistryError, match="cannot reach"):
        pull(store, f"127.0.0.1:{free_port()}/x:y", insecure=True)


def test_pull_by_digest(registry: Registry, tmp: str) -> None:
    from engine.distribution import pull, push

    src = ImageStore(f"{tmp}/src")
    ref = f"{registry.host}/cbx/dig:v1"
    make_image(src, ref, {"d": b"digest"}, tmp)
    image_id, _, digest = push(src, ref, insecure=True)
    dst = ImageStore(f"{tmp}/dst")
    got, shown = pull(dst, f"{registry.host}/cbx/dig@{digest}", insecure=True)
    assert got == image_id and shown.endswith(digest) and dst.get(image_id).tags == []


def test_token_auth_with_credentials_from_docker_config(tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.distribution import pull, push

    tokens = TokenServer("cbx-user", "cbx-pass")
    reg = Registry(tokens.auth_config())
    try:
        src = ImageStore(f"{tmp}/src")
        ref = f"{reg.host}/cbx/secret:v1"
        make_image(src, ref, {"s": b"secret"}, tmp)
        monkeypatch.setenv("DOCKER_CONFIG", f"{tmp}/nocreds")
        with pytest.raises(Unauthorized, match="token server"):
            push(src, ref, insecure=True)
        os.makedirs(f"{tmp}/docker")
        with open(f"{tmp}/docker/config.json", "w") as f:
            json.dump({"auths": {reg.host: {"auth": base64.b64encode(b"cbx-user:cbx-pass").decode()}}}, f)
        monkeypatch.setenv("DOCKER_CONFIG", f"{tmp}/docker")
        push(src, ref, insecure=True)
        dst = ImageStore(f"{tmp}/dst")
        image_id, _ = pull(dst, ref, insecure=True)
        assert image_id == src.get(ref).id and tokens.issued >= 2
        # the registry really wants a token
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://{reg.host}/v2/cbx/secret/tags/list", timeout=5)
        assert exc.value.code == 401
    finally:
        reg.close()
        tokens.close()
