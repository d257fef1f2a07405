"""The Docker API bridge's pure parts: multiplexed frames and the JSON translations."""

from __future__ import annotations

import pytest

from bridges.docker import mux, shapes
from engine.errors import InvalidArgument


def test_frames_have_docker_s_8_byte_header() -> None:
    assert mux.frame("stdout", b"hi\n") == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
    assert mux.frame("stderr", b"") == b"\x02\x00\x00\x00\x00\x00\x00\x00"
    big = b"x" * 70000
    buf = mux.frame("stdout", b"a") + mux.frame("stderr", big) + mux.frame("stdout", b"b")[:5]
    assert mux.parse(buf) == [(1, b"a"), (2, big)]  # the torn last frame waits for more


def test_create_args_from_what_docker_run_sends() -> None:
    body = {"Image": "docker.io/library/busybox", "Cmd": ["sh", "-c", "exit 3"],
            "Entrypoint": None, "Env": ["A=1"], "Tty": False, "OpenStdin": True,
            "AttachStdout": True, "Labels": {"k": "v"}, "WorkingDir": "/tmp",
            "HostConfig": {"Memory": 64 << 20, "NanoCpus": 500_000_000, "PidsLimit": 50,
                           "AutoRemove": True, "NetworkMode": "default",
                           "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}},
            "NetworkingConfig": {"EndpointsConfig": {"net1": {"Aliases": ["web"]}}}}
    args = shapes.create_args(body, "cbx-x")
    assert args["image"] == "busybox" and args["cmd"] == ["sh", "-c", "exit 3"]
    assert "entrypoint" not in args and "network" not in args  # the image's, the default
    assert (args["memory"], args["cpus"], args["pids_limit"]) == (64 << 20, 0.5, 50)
    assert args["auto_remove"] and args["open_stdin"] and args["name"] == "cbx-x"
    assert args["ports"] == [{"host_ip": "", "host_port": 8080, "container_port": 80,
                              "proto": "tcp"}]
    assert args["network_aliases"] == ["web"]
    assert shapes.create_args({"Image": "b", "Entrypoint": "", "HostConfig": {
        "NetworkMode": "host", "CpuQuota": 50000, "CpuPeriod": 100000}}, None)["network"] == "host"
    with pytest.raises(InvalidArgument, match="no image"):
        shapes.create_args({"Cmd": ["true"]}, None)
    with pytest.raises(InvalidArgument, match="Cmd must be"):
        shapes.create_args({"Image": "b", "Cmd": [1]}, None)


def test_refs_and_types_the_go_client_needs() -> None:
    assert shapes.short_ref("docker.io/library/busybox:1") == "busybox:1"
    assert shapes.short_ref("docker.io/me/app") == "me/app"
    assert shapes.short_ref("registry.local:5000/app") == "registry.local:5000/app"
    s = shapes.image_summary({"Id": "sha256:ab", "Created": "2024-01-02T03:04:05.123456789Z",
                              "Size": 10, "RepoTags": ["busybox:latest"]})
    assert s["Created"] == 1704164645 and s["RepoDigests"] == [] and s["Containers"] == -1
    info = shapes.info({"CgroupVersion": 1, "Architecture": "x86_64", "NCPU": 2}, {})
    assert info["CgroupVersion"] == "1" and info["Architecture"] == "amd64"
    ev = shapes.event({"seq": 3, "type": "container", "action": "die", "id": "c1",
                       "image": "busybox", "time": 1_700_000_000_123_456_789,
                       "attributes": {"exitCode": 3}})
    assert (ev["time"], ev["timeNano"], ev["status"]) == (1_700_000_000, 1_700_000_000_123_456_789, "die")
    assert ev["Actor"] == {"ID": "c1", "Attributes": {"exitCode": "3"}}


def test_container_filters() -> None:
    items = [{"Id": "abc", "Names": ["/web"], "State": "running", "Image": "busybox",
              "ImageID": "sha256:1", "Labels": {"app": "x"}, "Mounts": []},
             {"Id": "def", "Names": ["/db"], "State": "exited", "Image": "other",
              "ImageID": "sha256:2", "Labels": {}, "Mounts": [{"Name": "v", "Destination": "/v"}]}]
    from engine.filters import filter_containers as pick

    assert [c["Id"] for c in pick(items, shapes.parse_filters('{"name":["web"]}'))] == ["abc"]
    assert [c["Id"] for c in pick(items, shapes.parse_filters('{"status":{"exited":true}}'))] == ["def"]
    assert [c["Id"] for c in pick(items, {"label": ["app=x"]})] == ["abc"]
    assert [c["Id"] for c in pick(items, {"volume": ["v"]})] == ["def"]
    with pytest.raises(InvalidArgument, match="invalid filter"):
        pick(items, {"health": ["healthy"]})


def test_terminal_size_of_a_resize_request() -> None:
    assert shapes.terminal_size({"h": "24", "w": "80"}) == (24, 80)
    assert shapes.terminal_size({"h": "0", "w": "80"}) is None  # size not known yet
    assert shapes.terminal_size({}) is None
    for bad, says in (({"h": "abc", "w": "80"}, "whole numbers"), ({"h": "24", "w": "8.5"}, "whole numbers"),
                      ({"h": "-3", "w": "80"}, "out of range"), ({"h": "24", "w": "65536"}, "out of range")):
        with pytest.raises(InvalidArgument, match=says):
            shapes.terminal_size(bad)
