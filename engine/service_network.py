"""Network verbs (issue 5 fills this)."""
