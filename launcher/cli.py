"""`refinenet-launch`: the command line only translates arguments into calls and errors into exit codes.

    refinenet-launch --cluster FILE --stage r1|r2|eval|export [--dry-run] [...]
    refinenet-launch {logs,status,stop,list,health} ...
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from launcher.commands import LAUNCH, SUBCOMMANDS
from launcher.errors import LauncherError


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
