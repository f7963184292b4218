"""The one program the launcher runs on a host: `main([MODE, ARGS...])` runs that mode.

Modes: `exec` and `kill` (guard.py), `read` and `write` (files.py), `sweep` (sweep.py), `agent`
(agent.py), `state` (hoststate.py: the host's shared state), `stacks` (stacks.py: processes' Python
stacks), `glance` and `drain` (glance.py: the host at a glance in one run; waiting until it holds no
lease). Each mode's module is imported only when it runs, so a short command does not pay for the
agent's code. The launcher starts it through `launcher.transport.hostprog`; here it can also be run as
`python -m launcher.hostside.program MODE ARGS...`.
"""
import sys

USAGE = 2

#: mode -> (module under launcher.hostside, function taking the mode's arguments, returning the exit code)
MODES = {
    "exec": ("guard", "exec_mode"),
    "kill": ("guard", "kill_mode"),
    "read": ("files", "read_mode"),
    "write": ("files", "write_mode"),
    "sweep": ("sweep", "sweep_mode"),
    "agent": ("agent", "agent_mode"),
    "state": ("hoststate", "main"),
    "stacks": ("stacks", "main"),
    "glance": ("glance", "glance_mode"),
    "drain": ("glance", "drain_mode"),
}


def main(argv):
    """Run mode `argv[0]` with the rest of `argv`; its exit code (2 for an unknown mode)."""
    if not argv or argv[0] not in MODES:
        sys.stderr.write("usage: MODE ARGS...  (modes: {})\n".format(", ".join(sorted(MODES))))
        return USAGE
    module, function = MODES[argv[0]]
    imported = __import__("launcher.hostside." + module, fromlist=[function])
    return getattr(imported, function)(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
