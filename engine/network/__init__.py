"""Container networking: bridge networks, addresses, names and published ports.

- :mod:`.netlink`: the few rtnetlink messages a container's init sends to plug itself
  in (built with :mod:`struct`; the child between fork and exec imports nothing);
- :mod:`.ipam`: crash-safe address leases (a lease is a locked file);
- :mod:`.bridge`: the host bridges, through pyroute2 (imported only there);
- :mod:`.networks`: the network records (``bridge`` and user-defined ones);
- :mod:`.attach`: what the engine does for one container's start and removal;
- :mod:`.proxy`: the userland proxy of published ports, run in the monitor's loop.

Nothing here is imported by the CLI at load time.
"""
