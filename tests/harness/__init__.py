"""Shared test harness: spec factories, stand-in workload, launched jobs, processes, sshd and Slurm hosts."""
