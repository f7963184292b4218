"""Rendering a plan: quoted templates (`quoting`), shared artifacts (`artifacts`), the `Renderer`
backends add to, and `orchestrate.render_plan`, which is given the backend and the workload."""
