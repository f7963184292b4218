"""`backend: slurm`: Slurm places and starts the processes; the launcher adds rank tables, logs, health,
restarts."""
