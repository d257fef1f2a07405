"""Image transfer verbs: load, save, pull, push (issue 6 fills this)."""
