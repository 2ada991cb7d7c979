"""Starting a step process from a build that has several threads, and its death with the build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from modelbuild.executor import PARENT_ENV

# Runs in a fresh interpreter (where ctypes was never imported): one thread is
# stopped inside the import of ctypes, holding its module lock, while another
# spawns a worker. A child that ran Python code between fork and exec and
# imported ctypes there would wait for that lock forever, and so would Popen.
HARNESS = textwrap.dedent("""
    import importlib.machinery, sys, threading
    assert "ctypes" not in sys.modules
    started, release = threading.Event(), threading.Event()

    class SlowCtypes:
        def find_spec(self, name, path=None, target=None):
            if name != "ctypes":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            real = spec.loader.exec_module
            def exec_module(module):
                started.set()
                release.wait(60)
                real(module)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, SlowCtypes())
    threading.Thread(target=lambda: __import__("ctypes"), daemon=True).start()
    assert started.wait(30)

    from modelbuild.executor import forget, spawn_worker
    spawned = []
    def spawn():
        proc = spawn_worker(["--session"], ".", stdin=__import__("subprocess").PIPE)
        spawned.append(proc)
    thread = threading.Thread(target=spawn, daemon=True)
    thread.start()
    thread.join(20)
    release.set()
    if not spawned:
        import os
        print("hung: the step process never got to exec")
        sys.stdout.flush()
        for task in os.listdir("/proc/self/task"):  # the stuck child, which Popen never returned
            with open(f"/proc/self/task/{task}/children") as f:
                for pid in f.read().split():
                    os.kill(int(pid), 9)
        os._exit(1)
    proc = spawned[0]
    proc.stdin.close()  # a session with no jobs ends at once
    print("exit", proc.wait(30))
    forget(proc)
""")


def test_a_step_process_starts_while_another_thread_is_importing():
    done = subprocess.run([sys.executable, "-c", HARNESS], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "exit 0", done.stdout + done.stderr


def test_a_worker_whose_build_is_already_gone_ends_at_once():
    """The worker asks to die with its parent; if the build died before that, it is an orphan
    already (its parent pid is not the one passed down) and goes at once, with its group."""
    env = {**os.environ, PARENT_ENV: "1" if os.getpid() != 1 else "2"}
    proc = subprocess.Popen([sys.executable, "-m", "modelbuild.worker", "--session"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        code = proc.wait(60)  # a live parent would keep the session waiting for jobs on stdin
    finally:
        proc.kill()
    assert code == -signal.SIGKILL


def test_the_step_does_not_see_the_parent_pid():
    """The variable is the worker's, not the step's environment (nor its children's)."""
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    code = f"import os; from modelbuild import worker; worker.die_with_parent(); print({PARENT_ENV!r} in os.environ)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
