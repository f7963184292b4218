"""The save request: a file or SIGUSR1, taken without killing or interrupting the process (real signals,
each case in a fresh interpreter so this process's signal state is left alone)."""
import signal
import subprocess
import sys
import textwrap

from refinenet import save_request
from tests.harness.environment import REPO as REPO_ROOT


def _python(code, env=None, block_usr1=False):
    """Start a fresh interpreter on `code` with SIGUSR1 blocked from exec on, or not blocked."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK if block_usr1 else signal.SIG_UNBLOCK, {signal.SIGUSR1})
    try:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_the_request_file_is_pending_until_consumed(tmp_path):
    path = tmp_path / "request"
    request = save_request.SaveRequest(str(path))
    assert not request.pending()
    path.touch()
    assert request.pending()
    request.consume()
    assert not path.exists() and not request.pending()
    request.consume()  # already gone: nothing to do
    assert not save_request.SaveRequest(None).pending()


_WAIT = """
    import time
    def wait(request):
        deadline = time.monotonic() + 10
        while not request.pending():
            assert time.monotonic() < deadline, "no request seen"
            time.sleep(0.01)
"""


def test_sigusr1_is_a_request_for_threads_that_block_it_and_for_those_that_do_not():
    code = _WAIT + """
    import os, signal, threading
    from refinenet import save_request
    request = save_request.install()
    assert save_request.install() is request
    os.kill(os.getpid(), signal.SIGUSR1)
    wait(request)
    request.consume()
    assert not request.pending()

    def blocked():
        return signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    later = []
    t = threading.Thread(target=lambda: later.append(blocked()))
    t.start(); t.join()

    ready, done = threading.Event(), threading.Event()
    def unblocking():
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        ready.set()
        done.wait(10)
    t = threading.Thread(target=unblocking)
    t.start(); ready.wait(10)
    signal.pthread_kill(t.ident, signal.SIGUSR1)
    wait(request)
    done.set(); t.join()
    print("inherited blocked:", later[0], "main blocked:", blocked())
    """
    proc = _python(code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "inherited blocked: True main blocked: True"


def test_a_signal_before_install_is_kept_when_the_launcher_blocked_it_and_kills_otherwise():
    code = _WAIT + """
    import time
    time.sleep(1.0)  # still importing: no handler yet
    from refinenet import save_request
    request = save_request.install()
    wait(request)
    print("request taken")
    """
    masked = _python(code, block_usr1=True)
    masked.send_signal(signal.SIGUSR1)
    out, err = masked.communicate(timeout=60)
    assert masked.returncode == 0 and out.strip() == "request taken", err
    unmasked = _python(code)
    unmasked.send_signal(signal.SIGUSR1)
    unmasked.communicate(timeout=60)
    assert unmasked.returncode == -signal.SIGUSR1


def test_the_path_comes_from_the_environment(tmp_path):
    code = """
    from refinenet import save_request
    print(save_request.install().path)
    """
    env = {"REFINENET_SAVE_REQUEST": str(tmp_path / "req"), "PATH": "/usr/bin:/bin"}
    proc = _python(code, env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == str(tmp_path / "req")
