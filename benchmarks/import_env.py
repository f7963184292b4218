"""Which environment variables are read while a rank's modules are imported (so a warm interpreter must
have them at its start): Python-level reads and native getenv() calls, listed separately.

The modules of tests/e2e/warm_job.py's RANK_PRELOAD are imported by launcher/hostside/warm.py exactly as
a warm interpreter does (its ready report lists the names read through `os.environ`), under an
LD_PRELOAD shim built here with the C compiler that logs every getenv()/secure_getenv() name the
native libraries ask for between the start and the end of the imports.

    python benchmarks/import_env.py
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launcher.hostside import warm  # noqa: E402
from tests.e2e import warm_job  # noqa: E402

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
static int log_fd = -2;
static void note(const char *name) {
    if (log_fd == -2) {
        const char *path = NULL;
        for (char **e = environ; e && *e; e++)
            if (strncmp(*e, "GETENV_LOG=", 11) == 0) path = *e + 11;
        log_fd = path ? open(path, O_WRONLY | O_APPEND | O_CREAT, 0644) : -1;
    }
    if (log_fd >= 0 && name) { write(log_fd, name, strlen(name)); write(log_fd, "\n", 1); }
}
char *getenv(const char *name) {
    static char *(*real)(const char *);
    if (!real) real = (char *(*)(const char *))dlsym(RTLD_NEXT, "getenv");
    note(name);
    return real(name);
}
char *secure_getenv(const char *name) {
    static char *(*real)(const char *);
    if (!real) real = (char *(*)(const char *))dlsym(RTLD_NEXT, "secure_getenv");
    note(name);
    return real(name);
}
"""


def main() -> int:
    compiler = shutil.which("cc")
    with tempfile.TemporaryDirectory(prefix="import-env-") as tmp:
        work = Path(tmp)
        log = work / "getenv.log"
        env = warm_job.job_env()
        if compiler:
            (work / "shim.c").write_text(SHIM)
            subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(work / "shim.so"),
                            str(work / "shim.c"), "-ldl"], check=True)
            env.update(LD_PRELOAD=str(work / "shim.so"), GETENV_LOG=str(log))
        zygote = warm.Zygote.start("probe", sys.executable, warm_job.RANK_PRELOAD, main="refinenet.train",
                                   env=env, cwd=str(work), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        ready = zygote.wait_ready(300)
        names = log.read_text().splitlines() if compiler else []
        zygote.close()
        zygote.popen.wait(60)
    print(f"imports: {', '.join(warm_job.RANK_PRELOAD)} ({ready['seconds']:.2f} s)")
    print(f"\nread through os.environ while importing ({len(ready['import_env'])}):")
    print("  " + " ".join(ready["import_env"]))
    if not compiler:
        print("\nno C compiler (cc) here: the getenv() trace of native code is left out")
        return 0
    native = sorted(set(names))
    print(f"\nasked for with getenv() by native code from interpreter start to ready ({len(native)}):")
    print("  " + " ".join(native))
    uncovered = [n for n in native if not warm.import_time_name(n) and n not in ready["import_env"]]
    print(f"\nnative reads outside warm.py's IMPORT_TIME_NAMES/PREFIXES and the traced names "
          f"({len(uncovered)}):")
    print("  " + " ".join(uncovered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
