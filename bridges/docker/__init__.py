"""bridges.docker: the Docker Engine API served over a unix socket (issue 8)."""
