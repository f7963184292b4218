"""What the tests and benchmarks share, one of each (no test module imports another):

- `specs`: cluster specs, plan factories, plans and failures, built the way the launcher builds them;
- `standin`, `standin_workload`: the stand-in workload and the one `python` wrapper that runs it;
- `clusters`: cluster files written as YAML (local and SSH hosts, spares, env, policies);
- `cli`: `refinenet-launch` to its end in a child process; `launched`: a launched job watched from outside;
- `procs`: a job's processes in /proc by their tag; `waiting`: polling with a deadline;
- `environment`: the repository and child processes' environment; `data`: a tiny synthetic dataset;
- `hosts`: simulated SSH hosts and Slurm cluster (tests/e2e/sshd.py, tests/e2e/slurm.py);
- `sharing`, `occupant`: hosts shared by several launcher machines and users, each with its own state
  directory, and ranks that record when they hold which device; `users`: another login user of this
  machine and a Python it can run; `pdsh`: pdsh starting the stand-in ranks, the launch benchmarks'
  yardstick;
- `checkpoints`: checkpoints left on a host; `model`: a small saved RefineNet (MindSpore).
"""
