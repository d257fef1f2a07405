"""registrator's naming rules, on inspect dicts shaped like the engine's."""

from __future__ import annotations

from bridges.services import Service, services_of


def container(ports: dict, *, env=(), labels=None, image="registry:5000/team/redis:7",
              running=True, ip="10.88.0.5", name="/cache") -> dict:
    return {"Id": "c" * 64, "Name": name, "State": {"Running": running},
            "Config": {"Image": image, "Env": list(env), "Labels": labels or {}},
            "NetworkSettings": {"IPAddress": ip, "Ports": ports}}


def one(**kw) -> Service:
    (s,) = services_of(container({"6379/tcp": [{"HostIp": "0.0.0.0", "HostPort": "16379"}]}, **kw),
                       host="h1", host_ip="192.0.2.1")
    return s


def test_one_published_port_named_after_the_image() -> None:
    s = one()
    assert (s.name, s.ip, s.port, s.proto, s.id) == ("redis", "192.0.2.1", 16379, "tcp",
                                                     "h1:cache:6379")
    assert s.container_id == "c" * 64 and s.host == "h1" and s.tags == ()


def test_a_host_ip_in_the_binding_is_kept() -> None:
    (s,) = services_of(container({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}),
                       host="h1", host_ip="192.0.2.1")
    assert (s.ip, s.port) == ("127.0.0.1", 8080)


def test_several_ports_get_port_suffixes_and_udp_ids() -> None:
    c = container({"53/udp": [{"HostIp": "", "HostPort": "5353"}],
                   "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                   "443/tcp": None})
    got = {(s.name, s.port, s.id) for s in services_of(c, host="h", host_ip="1.2.3.4")}
    assert got == {("redis-53", 5353, "h:cache:53:udp"), ("redis-80", 8080, "h:cache:80")}


def test_env_and_labels_override_labels_winning() -> None:
    s = one(env=["SERVICE_NAME=from-env", "SERVICE_TAGS=a,b", "SERVICE_REGION=eu", "OTHER=x"],
            labels={"SERVICE_NAME": "from-label"})
    assert (s.name, s.tags, s.attrs) == ("from-label", ("a", "b"), {"region": "eu"})
    assert one(env=["SERVICE_ID=fixed"]).id == "fixed"


def test_per_port_metadata_and_ignore() -> None:
    c = container({"80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                   "9000/tcp": [{"HostIp": "", "HostPort": "9000"}]},
                  env=["SERVICE_80_NAME=web", "SERVICE_80_TAGS=http", "SERVICE_9000_IGNORE=1"])
    (s,) = services_of(c, host="h", host_ip="1.2.3.4")
    assert (s.name, s.tags, s.port) == ("web", ("http",), 8080)
    assert services_of(container({"80/tcp": [{"HostIp": "", "HostPort": "1"}]},
                                 labels={"SERVICE_IGNORE": "true"}), host="h", host_ip="x") == []


def test_explicit_registers_only_named_services() -> None:
    c = container({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]})
    assert services_of(c, host="h", host_ip="x", explicit=True) == []
    c = container({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}, env=["SERVICE_NAME=web"])
    assert [s.name for s in services_of(c, host="h", host_ip="x", explicit=True)] == ["web"]


def test_internal_uses_the_containers_address_and_exposed_ports() -> None:
    c = container({"6379/tcp": None})
    assert services_of(c, host="h", host_ip="x") == []  # nothing published
    (s,) = services_of(c, host="h", host_ip="x", internal=True)
    assert (s.ip, s.port) == ("10.88.0.5", 6379)


def test_stopped_containers_offer_nothing() -> None:
    c = container({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}, running=False)
    assert services_of(c, host="h", host_ip="x") == []


def test_json_round_trip() -> None:
    s = one(env=["SERVICE_TAGS=a", "SERVICE_ZONE=z1"])
    assert Service.from_json(s.to_json()) == s
