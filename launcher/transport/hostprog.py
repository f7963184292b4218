"""How the launcher runs its host program (`launcher.hostside`) on a host that has no copy of it.

Every command on every transport is ``python -S -c BOOTSTRAP MODE ARGS... N``: BOOTSTRAP reads N
bytes from stdin (the bundle: every `launcher/hostside` source), installs them as the modules
`launcher.hostside.*` (loaded only when imported, under empty parent packages `launcher` and
`launcher.hostside`), and exits with `launcher.hostside.program.main([MODE, ARGS...])`. The rest of
stdin belongs to the mode: the exec guard's header, the agent's document, a file's bytes. `-S` skips
site-packages (the program needs only the standard library and starts faster); `ps` on the host shows
the short BOOTSTRAP, not the sources.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from launcher.hostside import program

PACKAGE = "launcher.hostside"
MODES = tuple(sorted(program.MODES))

BOOTSTRAP = (
    "import os,sys\n"
    "n=int(sys.argv[-1]);b=b''\n"
    "while len(b)<n:\n"
    " c=os.read(0,n-len(b))\n"
    " if not c:sys.exit(127)\n"
    " b+=c\n"
    "p=b.decode().split('\\0');S=dict(zip(p[::2],p[1::2]))\n"
    "class L:\n"
    " def find_spec(s,k,*a):\n"
    "  if k in S:return type(sys.__spec__)(k,s,is_package=k.count('.')<2)\n"
    " def create_module(s,x):0\n"
    " def exec_module(s,m):\n"
    "  m.__source__=S[m.__name__];exec(compile(m.__source__,m.__name__,'exec'),m.__dict__)\n"
    "sys.meta_path.insert(0,L())\n"
    "from launcher.hostside import program\n"
    "sys.exit(program.main(sys.argv[1:-1]))\n"
)


def _bundle() -> bytes:
    folder = Path(program.__file__).parent
    entries = [("launcher", ""), (PACKAGE, (folder / "__init__.py").read_text(encoding="utf-8"))]
    for path in sorted(folder.glob("*.py")):
        if path.name != "__init__.py":
            entries.append((f"{PACKAGE}.{path.stem}", path.read_text(encoding="utf-8")))
    for name, source in entries:
        if "\0" in source:
            raise ValueError(f"{name}: a host program's source cannot contain NUL")
    return "\0".join(f"{name}\0{source}" for name, source in entries).encode("utf-8")


_BUNDLE = _bundle()


def bundle() -> bytes:
    """Every host program source, as BOOTSTRAP reads it: ``name NUL source NUL name NUL source``."""
    return _BUNDLE


def host_argv(python: str, mode: str, *args: str) -> List[str]:
    """The command that runs `mode` with `args` on a host with `python`; feed it `host_stdin(...)`."""
    if mode not in MODES:
        raise ValueError(f"unknown host program mode {mode!r} (one of {', '.join(MODES)})")
    return [python, "-S", "-c", BOOTSTRAP, mode, *(str(a) for a in args), str(len(_BUNDLE))]


def host_stdin(payload: bytes = b"") -> bytes:
    """What a command of `host_argv` reads first: the bundle, then the mode's own input."""
    return _BUNDLE + payload
