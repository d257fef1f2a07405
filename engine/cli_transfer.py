"""``chanbox load|save|pull|push``: images in and out (issue 6 fills this)."""
