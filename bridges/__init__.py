"""Bridges from the engine's services and events to etcd, Serf, ZooKeeper and the Docker Engine API (issues 7 and 8)."""
