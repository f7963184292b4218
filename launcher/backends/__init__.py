"""Launch backends: how each one renders, reads and stops its processes (`registry.backend_for`)."""
