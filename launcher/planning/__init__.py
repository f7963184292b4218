"""Planning a launch: the request (`request`), what it prepares (`prepare`), and the plan factory of each
attempt (`factory`)."""
