"""``chanbox bridge docker`` (issue 8 fills this)."""
