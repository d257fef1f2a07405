"""The container engine: images as layer stacks, containers in namespaces and cgroups, served as channel verbs (issue 3)."""
