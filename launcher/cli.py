"""`refinenet-launch`: the command line only translates arguments into calls and errors into exit codes.

    refinenet-launch --cluster FILE --stage r1|r2|eval|export [--dry-run] [...]
    refinenet-launch {logs,status,stop,list,health} ...
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from launcher.errors import LauncherError

#: Subcommand name -> module with `build_parser(prog) -> ArgumentParser` and `run(args) -> int`.
SUBCOMMANDS = {
    "logs": "launcher.commands.logs",
    "status": "launcher.commands.status",
    "stop": "launcher.commands.stop",
    "list": "launcher.commands.list_jobs",
    "health": "launcher.commands.health",
    "report": "launcher.commands.report",
    "top": "launcher.commands.top",
    "submit": "launcher.commands.submit",
}
LAUNCH = "launcher.commands.launch"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        name, module_name, rest = argv[0], SUBCOMMANDS[argv[0]], argv[1:]
        prog = f"refinenet-launch {name}"
    else:
        module_name, rest, prog = LAUNCH, argv, "refinenet-launch"
    module = importlib.import_module(module_name)
    args = module.build_parser(prog).parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except LauncherError as exc:
        print(f"refinenet-launch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("refinenet-launch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
