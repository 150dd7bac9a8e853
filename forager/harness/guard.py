"""Forager's guard: what a test child runs under, so that the code under test cannot decide outcomes.

Copied into the container next to `runner.py` as `forager_guard.py` and imported by the child before
the repository is on sys.path. Standard library and pytest only (Python >= 3.8). It holds:

- an audit hook (`sys.addaudithook`: the code under test cannot remove it) that refuses frame walking,
  tracing, heap walking, `__code__` assignment, ctypes and writes to test files or to the runner's
  directory when a line the agent added is doing it;
- a pytest plugin, registered before any test module is imported, that observes each test call
  itself (an exception seen here cannot be turned into a pass by patching reports), checks that the
  test function's code is the code of the clean source the parent read before the child started
  (a test rewritten on disk while it is imported and restored afterwards, or a `__code__` swap, is
  caught), checks that pytest's and unittest's machinery was not replaced, and sends one signed
  record per observation to the parent on an inherited pipe.
"""

import ast
import fnmatch
import hashlib
import inspect
import os
import sys

_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "object.__setattr__", "object.__getattr__", "open", "os.remove",
    "os.rename", "os.truncate", "shutil.copyfile", "shutil.move", "shutil.rmtree", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.addressof", "ctypes.cdata", "sys.addaudithook",
})
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
_WRITES = frozenset({"os.remove", "os.rename", "os.truncate", "shutil.copyfile", "shutil.move", "shutil.rmtree"})
# Replacing any of these changes what a test outcome means; they are compared by identity per test.
_WATCHED = (
    "_pytest.python:Function.runtest", "_pytest.python:pytest_pyfunc_call", "_pytest.runner:call_and_report",
    "_pytest.runner:runtestprotocol", "_pytest.runner:call_runtest_hook", "_pytest.runner:CallInfo.from_call",
    "_pytest.runner:pytest_runtest_call", "_pytest.runner:check_interactive_exception",
    "_pytest.reports:TestReport.from_item_and_call", "_pytest.reports:TestReport.__init__",
    "_pytest.skipping:pytest_runtest_makereport", "_pytest.skipping:evaluate_xfail_marks",
    "_pytest.skipping:evaluate_skip_marks", "_pytest.unittest:TestCaseFunction.runtest",
    "_pytest.outcomes:skip", "_pytest.outcomes:xfail", "_pytest.outcomes:fail", "_pytest.outcomes:exit",
    "_pytest.python_api:raises", "_pytest.python_api:approx", "pytest:raises", "pytest:approx", "pytest:skip",
    "pytest:xfail", "pytest:fail", "unittest:TestCase.run", "unittest:TestCase.__call__",
    "unittest:TestCase.debug", "unittest:TestCase._callTestMethod", "unittest.case:_Outcome.testPartExecutor",
    "pluggy._callers:_multicall", "builtins:AssertionError", "builtins:__import__", "builtins:isinstance",
    "builtins:BaseException", "builtins:Exception", "sys:exc_info", "sys:exit", "os:_exit",
)
_HOOKS = ("pytest_runtest_protocol", "pytest_runtest_call", "pytest_pyfunc_call", "pytest_runtest_makereport",
          "pytest_runtest_setup", "pytest_runtest_teardown", "pytest_report_teststatus")


def code_digest(code):
    """A digest of what a code object does (marshal's output depends on reference counts: not stable)."""
    h = hashlib.sha256()
    for part in (code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_flags, code.co_code,
                 code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.update(repr(part).encode() + b"\0")
    for const in code.co_consts:
        h.update((code_digest(const) if inspect.iscode(const) else repr(const)).encode() + b"\0")
    return h.hexdigest()


def _code_objects(code):
    yield code
    for const in code.co_consts:
        if inspect.iscode(const):
            for inner in _code_objects(const):
                yield inner


def _resolve(spec):
    """The raw object a `module:attr.attr` names (a class's own descriptor, not a new bound method)."""
    module, _, dotted = spec.partition(":")
    obj = sys.modules.get(module)
    parts = dotted.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part, None)
    if isinstance(obj, type):
        for klass in obj.__mro__:
            if parts[-1] in vars(klass):
                return vars(klass)[parts[-1]]
        return None
    return getattr(obj, parts[-1], None)


def _make_channel(sha256=hashlib.sha256, write=os.write, isinstance=isinstance, ord=ord, sorted=sorted,
                  str=str, int=int, bool=bool, dict=dict, list=list, tuple=tuple, bytes=bytes, repr=repr):
    """`send(fd, key, record)`: write `mac json` of a flat record to the parent.

    Built only from references taken when the guard is imported, before any repository code runs:
    not the json, hmac or os modules, whose attributes the code under test can replace (a replaced
    `json.dumps` once rewrote failures into passes before the guard signed them). HMAC-SHA256 is
    spelled out over the captured `sha256`; builtin types' methods cannot be replaced.
    """

    def text(value):
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        if isinstance(value, int):
            return "%d" % value
        if isinstance(value, str):
            out = []
            for ch in value:
                code = ord(ch)
                if 0x20 <= code < 0x7F and ch != '"' and ch != "\\":
                    out.append(ch)
                elif code < 0x10000:
                    out.append("\\u%04x" % code)
                else:  # a surrogate pair, as JSON spells characters outside the BMP
                    code -= 0x10000
                    out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
            return '"' + "".join(out) + '"'
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(text(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ",".join(text(str(k)) + ":" + text(value[k]) for k in sorted(value)) + "}"
        return text(repr(value))

    def mac(key, body):
        key = key + bytes(64 - len(key)) if len(key) <= 64 else sha256(key).digest() + bytes(32)
        inner = sha256(bytes(b ^ 0x36 for b in key) + body).digest()
        return sha256(bytes(b ^ 0x5C for b in key) + inner).hexdigest()

    def send(fd, key, record):
        body = text(record).encode()
        data = mac(key, body).encode() + b" " + body + b"\n"
        while data:
            data = data[write(fd, data):]

    return send


class Guard:
    """The child's pytest plugin and audit hook; `emit` sends a signed record to the parent."""

    def __init__(self, request, fd, key):
        self.cwd = os.path.realpath(request["cwd"])
        self.sources = request.get("sources") or {}  # relative path -> the clean text the parent read
        self.patterns = tuple(request.get("test_patterns") or ())
        self.added = {os.path.join(self.cwd, p): frozenset(lines) for p, lines in (request.get("agent_lines") or {}).items()}
        self.changed = frozenset(os.path.join(self.cwd, p) for p in request.get("agent_files") or ())
        self.private = os.path.realpath(request["private"])
        self._fd, self._key, self._busy = fd, key, False
        self._send = _make_channel()
        self._expected = {}
        self._watched = {}

    # -- the channel to the parent ---------------------------------------------------------------
    def emit(self, record):
        self._send(self._fd, self._key, record)

    def tamper(self, why, test=None):
        self.emit({"t": "tamper", "why": why, "id": test})

    # -- the audit hook -----------------------------------------------------------------------------
    def _is_added(self, frame):
        lines = self.added.get(frame.f_code.co_filename)
        return lines is not None and frame.f_lineno in lines

    def _added_on_stack(self, frame):
        while frame is not None:
            if self._is_added(frame):
                return True
            frame = frame.f_back
        return False

    def _protected_write(self, path):
        try:
            path = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        if path == self.private or path.startswith(self.private + os.sep):
            return True
        if not path.startswith(self.cwd + os.sep):
            return False
        rel = path[len(self.cwd) + 1:]
        return rel in self.sources or self.is_test_path(rel)

    def audit(self, event, args):
        if event not in _EVENTS or self._busy or not self.added:
            return
        # The frequent events that cannot matter leave before any frame is looked at.
        if (event == "object.__getattr__" and args[1] not in _FRAME_ATTRS) or \
                (event == "object.__setattr__" and args[1] != "__code__") or \
                (event == "open" and not isinstance(args[0], int) and not any(c in str(args[1] or "r") for c in "wax+")):
            return
        self._busy = True
        try:
            why = self._audit(event, args, sys._getframe(1))
        except Exception:  # noqa: BLE001 - the hook must never break an operation by its own fault
            why = None
        finally:
            self._busy = False
        if why:
            self.tamper("the agent's code " + why)
            raise RuntimeError("forager: %s is not allowed in the code under test" % event)

    def _audit(self, event, args, caller):
        if event == "open":
            path, mode = args[0], str(args[1] or "r")
            if isinstance(path, int):
                return "opened file descriptor %d" % path if self._is_added(caller) else None
            if any(c in mode for c in "wax+") and self._protected_write(path) and self._added_on_stack(caller):
                return "wrote to %s" % path
            return None
        if event in _WRITES:
            return ("changed %s" % args[0]) if self._protected_write(args[0]) and self._added_on_stack(caller) else None
        if event == "object.__setattr__" and args[1] != "__code__":
            return None
        if event == "object.__getattr__" and args[1] not in _FRAME_ATTRS:
            return None
        if self._is_added(caller) or (
                event == "sys._getframe" and args and inspect.isframe(args[0]) and self._is_added(args[0])):
            return "called %s (%s line %d)" % (event, caller.f_code.co_filename, caller.f_lineno)
        if event in ("sys.settrace", "sys.setprofile", "gc.get_objects", "sys.addaudithook") and \
                self._added_on_stack(caller):
            return "called %s" % event
        return None

    # -- the pytest plugin ------------------------------------------------------------------------------
    def is_test_path(self, rel):
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in self.patterns)

    def pytest_configure(self, config):  # noqa: ARG002 - before any test module is imported
        import pytest  # noqa: F401
        import unittest  # noqa: F401
        for spec in _WATCHED:
            self._watched[spec] = _resolve(spec)

    def _replaced(self):
        return [spec for spec, obj in self._watched.items() if _resolve(spec) is not obj]

    def _foreign_hooks(self, item):
        """Hook implementations that live in a file the agent changed (not a test file or a plugin)."""
        found = []
        for name in _HOOKS:
            caller = getattr(item.ihook, name, None)
            for impl in (caller.get_hookimpls() if caller is not None else ()):
                code = getattr(inspect.unwrap(impl.function), "__code__", None)
                if code is not None and self._real(code.co_filename) in self.changed:
                    found.append("%s in %s" % (name, code.co_filename))
        return found

    def _real(self, path, _cache={}):  # noqa: B006 - one cache for the child's life
        if path not in _cache:
            _cache[path] = os.path.realpath(path)
        return _cache[path]

    def _expected_digests(self, rel, item, rewritten):
        key = (rel, rewritten)
        if key not in self._expected:
            source = self.sources[rel].encode("utf-8")
            filename = os.path.join(self.cwd, rel)
            tree = ast.parse(source, filename=filename)
            if rewritten:
                from _pytest.assertion.rewrite import rewrite_asserts

                params = inspect.signature(rewrite_asserts).parameters
                if "source" in params:
                    rewrite_asserts(tree, source, filename, item.config)
                else:
                    rewrite_asserts(tree, filename, item.config)
            code = compile(tree, filename, "exec", dont_inherit=True)
            digests = {}
            for inner in _code_objects(code):
                digests.setdefault((inner.co_name, inner.co_firstlineno), set()).add(code_digest(inner))
            self._expected[key] = digests
        return self._expected[key]

    def check_function(self, item):
        """Why the test's function is not the one the clean source defines, or None."""
        fn = getattr(item, "obj", None)
        for _ in range(16):
            code = getattr(fn, "__code__", None)
            if code is not None:
                path = self._real(code.co_filename)
                rel = path[len(self.cwd) + 1:] if path.startswith(self.cwd + os.sep) else None
                if rel is not None and rel in self.sources:
                    rewritten = "@py_builtins" in getattr(fn, "__globals__", {})
                    expected = self._expected_digests(rel, item, rewritten)
                    if code_digest(code) not in expected.get((code.co_name, code.co_firstlineno), ()):
                        return "the code of %s is not the code in %s" % (item.nodeid, rel)
                elif rel is not None and not self.is_test_path(rel):
                    return "the code of %s comes from %s, not a test file" % (item.nodeid, rel)
            fn = getattr(fn, "__wrapped__", None)
            if fn is None:
                break
        return None

    def _outcome_origin(self, exc):
        """The file that raised a skip or xfail, when it is one the agent changed."""
        tb, origin = getattr(exc, "__traceback__", None), None
        while tb is not None:
            path = os.path.realpath(tb.tb_frame.f_code.co_filename)
            if "_pytest" not in path.split(os.sep):
                origin = path
            tb = tb.tb_next
        return origin if origin in self.changed else None

    def pytest_runtest_call(self, item):
        why = self.check_function(item) if self.sources else None
        replaced = self._replaced() + self._foreign_hooks(item)
        if replaced:
            why = "replaced the test machinery: " + ", ".join(replaced[:5])
        if why:
            self.tamper(why, item.nodeid)
        outcome = yield
        excinfo = outcome.excinfo
        seen = "passed"
        if excinfo is not None:
            import _pytest.outcomes as po

            exc = excinfo[1]
            seen = "xfail" if isinstance(exc, po.XFailed) else "skip" if isinstance(exc, po.Skipped) else "raised"
            origin = self._outcome_origin(exc) if seen in ("xfail", "skip") else None
            if origin:
                self.tamper("the agent's code (%s) skipped or xfailed %s" % (origin, item.nodeid), item.nodeid)
        self.emit({"t": "call", "id": item.nodeid, "seen": seen})

    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        longrepr = "" if report.passed else str(getattr(report, "longrepr", "") or "")[-4000:]
        self.emit({"t": "report", "id": item.nodeid, "when": call.when, "outcome": report.outcome,
                   "xfail": hasattr(report, "wasxfail"), "message": longrepr})

    def pytest_sessionfinish(self, session, exitstatus):  # noqa: ARG002
        replaced = self._replaced()
        if replaced:
            self.tamper("replaced the test machinery: " + ", ".join(replaced[:5]))


def mark_hooks():
    """Mark the guard's hooks (once, on the class): outermost wrappers, so they see what the real call raised."""
    import pytest

    pytest.hookimpl(hookwrapper=True, tryfirst=True)(Guard.pytest_runtest_call)
    pytest.hookimpl(hookwrapper=True, tryfirst=True)(Guard.pytest_runtest_makereport)
    pytest.hookimpl(tryfirst=True)(Guard.pytest_configure)
