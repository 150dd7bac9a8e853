"""Forager's pytest fork server, copied into the container beside the runner as `forager_fork_server.py`.

Standard library and pytest only, on any Python >= 3.8, like the runner. Mutate-fix validation runs
hundreds of small pytest sessions in one container, and what each would import and set up again is
most of a small session's cost; so the server imports pytest, its builtin plugins and the installed
pytest plugins once, freezes that heap (a child's garbage collections skip it), and runs each
request in a forked child. Requests arrive as JSON lines on a FIFO and replies leave on another: the
shell talks to it with builtins alone, so a run costs no extra process start. It is not for
grading: the grader runs every test run in a fresh process under the guard (the runner's `run`).

Nothing of the repository is imported by the server: a plugin that would import it (the project's
own pytest plugin) is left for each child to import. The first children report the modules they
imported before their first test ran (a warning category named in the project's pytest settings,
the project's dependencies); the server imports those that come from outside the repository too,
after a probe child showed they import nothing of it and start no thread.

Bytecode: with `pycache` in the start request, children read and write compiled files under that
directory, never in the repository. Python trusts a compiled file when its source has the same
mtime (in seconds) and size, so each request names the files it changed (`changed`) and the server
gives each an mtime no other content of it ever had before the child starts.
"""

import gc
import json
import os
import select
import signal
import sys
import time

_STAMP = [1000000000]  # 2001-09-09: far from any checkout's mtime, and never given twice
_LEARN_FROM = 3  # requests whose children report their modules


def serve(request, run_pytest):
    """Serve requests until the FIFO goes or the parent dies; `run_pytest(request)` runs one session."""
    cwd = request["cwd"]
    os.chdir(cwd)
    _preload(os.path.realpath(cwd))
    if request.get("pycache") and hasattr(sys, "pycache_prefix"):
        sys.dont_write_bytecode = False  # children inherit it; processes the tests start keep the env's
        sys.pycache_prefix = request["pycache"]
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()
    parent = os.getppid()
    inbox, outbox = request["fifo"] + ".in", request["fifo"] + ".out"
    for path in (inbox, outbox):
        if not os.path.exists(path):
            os.mkfifo(path, 0o600)
    # Opened read-write, the inbox always has a writer (us): no EOF between clients, and select works.
    fd = os.open(inbox, os.O_RDWR)
    sys.stdout.write("FORAGER-SERVING %d\n" % os.getpid())
    sys.stdout.flush()
    pending, served = b"", 0
    root = os.path.realpath(cwd)
    while os.getppid() == parent and os.path.exists(inbox):
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        pending += os.read(fd, 65536)
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            learn = request["log"] + ".modules" if served < _LEARN_FROM else None
            reply = json.dumps(_serve_one(request, cwd, run_pytest, learn)) + "\n"
            _reply(outbox, reply.encode())
            served += 1
            if learn and os.path.exists(learn):  # after the reply: the client does not wait for it
                _learn(learn, root)


def _preload(cwd):
    """Import pytest, its builtin plugins and the installed plugins, but nothing from `cwd`."""
    import importlib
    import importlib.util

    import pytest  # noqa: F401  (the point of the server: imported once)
    from _pytest.config import default_plugins

    for name in default_plugins:
        try:
            importlib.import_module("_pytest." + name)
        except ImportError:
            pass
    try:
        from importlib import metadata

        found = metadata.entry_points()
        plugins = found.select(group="pytest11") if hasattr(found, "select") else found.get("pytest11", [])
    except Exception:  # noqa: BLE001 - no metadata: the children load plugins themselves
        return
    for plugin in plugins:
        module = plugin.value.split(":")[0].strip()
        try:
            spec = importlib.util.find_spec(module.split(".")[0])  # a top-level name: nothing runs
        except (ImportError, ValueError):
            continue
        where = [spec.origin or ""] + list(spec.submodule_search_locations or []) if spec else []
        if any(p and os.path.realpath(p).startswith(cwd + os.sep) for p in where):
            continue  # the project's own plugin
        before = set(sys.modules)
        try:
            importlib.import_module(module)
        except BaseException:  # noqa: BLE001 - a broken plugin fails in the child, where pytest reports it
            pass
        added = set(sys.modules) - before
        if any(_is_under(sys.modules.get(name), cwd) for name in added):
            for name in added:  # it imported the repository: each child imports all of it afresh
                sys.modules.pop(name, None)


class _ModulesSeen:
    """In a child: writes the modules imported by the time collection ended that the server lacks."""

    def __init__(self, path, known, root):
        self.path, self.known, self.root = path, known, root

    def pytest_collection_finish(self, session):  # noqa: ARG002 - pytest hook signature
        names = [name for name, module in list(sys.modules.items())
                 if name not in self.known and module is not None and not _is_under(module, self.root)]
        with open(self.path, "w") as fh:
            json.dump(names, fh)


def _learn(path, root):
    """Import what the children reported, when a probe child shows it imports nothing of the repository
    and starts no thread (a fork copies only the thread that forks)."""
    import importlib

    with open(path) as fh:
        names = [n for n in json.load(fh) if n not in sys.modules and not n.startswith(("__", "forager_"))]
    os.unlink(path)
    if not names:
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            threads = len(os.listdir("/proc/self/task"))
            for name in names:
                try:
                    importlib.import_module(name)
                except BaseException:  # noqa: BLE001 - not importable on its own: left to the children
                    pass
            clean = len(os.listdir("/proc/self/task")) == threads and \
                not any(_is_under(m, root) for m in list(sys.modules.values()) if m is not None)
            os.write(write_fd, b"ok" if clean else b"no")
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 60.0)  # an import that hangs: learn nothing
    verdict = os.read(read_fd, 2) if ready else b""
    os.close(read_fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if verdict != b"ok":
        return
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001
            pass
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()


def _is_under(module, root):
    paths = [getattr(module, "__file__", None) or ""] + list(getattr(module, "__path__", None) or [])
    return any(p and os.path.realpath(p).startswith(root + os.sep) for p in paths)


def _reply(path, data, patience=10.0):
    """Hand a reply to the waiting shell; give up if nobody reads (the client was killed)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            out = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
    try:
        os.set_blocking(out, True)
        os.write(out, data)
    finally:
        os.close(out)


def _serve_one(request, cwd, run_pytest, learn=None):
    """One pytest session in a forked child: its exit code, whether it timed out, its wall and CPU time.
    With `learn`, the child writes there the modules it imported before its first test."""
    for path in request.get("changed") or []:
        _STAMP[0] += 1
        try:
            os.utime(os.path.join(cwd, path), (_STAMP[0], _STAMP[0]))
        except OSError:
            pass
    started = time.monotonic()
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid = os.fork()
    if pid == 0:  # the child: one pytest session, then exit without running the parent's atexit hooks
        try:
            os.setsid()
            os.dup2(log, 1)
            os.dup2(log, 2)
            plugins = [_ModulesSeen(learn, set(sys.modules), os.path.realpath(cwd))] if learn else []
            sys.path.insert(0, cwd)
            rc = run_pytest(request, plugins)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(rc))
        except BaseException:  # noqa: BLE001 - anything here must end the child, not the server
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)
    os.close(log)
    deadline = started + float(request.get("timeout") or 1e9)
    timed_out, status, usage = False, None, None
    while status is None:
        done, raw, usage = os.wait4(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, usage = os.wait4(pid, 0)
        else:
            time.sleep(0.002)
    rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    return {"rc": rc, "timed_out": timed_out, "duration": time.monotonic() - started,
            "cpu": usage.ru_utime + usage.ru_stime}
