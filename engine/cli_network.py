"""``chanbox network ...``: bridge networks (issue 5 fills this)."""
