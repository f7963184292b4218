"""Sharing hosts between jobs and users: launcher-side policies (queue order, all-or-nothing, bad hosts)."""
