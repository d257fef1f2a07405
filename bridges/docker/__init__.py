"""bridges.docker: the Docker Engine API served over a unix socket (issue 8).

``chanbox bridge docker`` runs :func:`bridges.docker.server.serve`: an aiohttp server
that answers what the ``docker`` CLI (28.x) and docker-py send, by calling the
engine's verbs over chan (:mod:`bridges.docker.aioclient`).  Modules:

- :mod:`~bridges.docker.aioclient`: an asyncio channel client of a chanbox daemon;
- :mod:`~bridges.docker.mux`: the multiplexed stdout/stderr frames and hijacked
  (101 ``Upgrade: tcp``) connections;
- :mod:`~bridges.docker.shapes`: engine answers in Docker's JSON shapes, and back;
- :mod:`~bridges.docker.server`: the app, errors, ping, version, info, events;
- :mod:`~bridges.docker.containers`, :mod:`~bridges.docker.execs`,
  :mod:`~bridges.docker.images`, :mod:`~bridges.docker.volumes`: the endpoints.

Nothing here is imported when the ``chanbox`` CLI starts (only ``cli``, which needs
click alone).
"""
