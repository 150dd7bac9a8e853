#!/usr/bin/env python3
"""Validate the code-contests problem set in problems.jsonl.gz (next to this script).

For every problem it checks the schema (keys and types, unique kebab-case ids,
2 examples, 6-10 hidden tests, test inputs under 1.5 MB) and runs the reference
solution with ``python -c`` on every example and test, comparing its output with
the expected output (trailing whitespace on each line and trailing blank lines
are ignored).  It prints one line per problem with its slowest run time and a
final summary, and exits with status 1 if anything fails.

Usage: python3 check_problems.py [path/to/problems.jsonl[.gz]] [--id ID ...]
Standard library only.
"""
import gzip
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PATH = os.path.join(HERE, "problems.jsonl.gz")

KEYS = {
    "id": str,
    "title": str,
    "statement": str,
    "examples": list,
    "tests": list,
    "solution": str,
    "time_limit_s": (int, float),
    "memory_mb": int,
    "difficulty": str,
}
DIFFICULTIES = ("easy", "medium", "hard")
ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MIN_PROBLEMS = 30
N_EXAMPLES = 2
MIN_TESTS, MAX_TESTS = 6, 10
MAX_INPUT_BYTES = 1_500_000
MAX_FILE_BYTES = 8 * 1024 * 1024


def normalize(text):
    """Strip trailing whitespace on each line and drop trailing blank lines."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines)


def first_difference(got, want):
    g, w = got.split("\n"), want.split("\n")
    for i in range(max(len(g), len(w))):
        a = g[i] if i < len(g) else "<missing>"
        b = w[i] if i < len(w) else "<missing>"
        if a != b:
            return f"line {i + 1}: got {a[:80]!r}, expected {b[:80]!r}"
    return "outputs differ"


def check_schema(p):
    """Return a list of problems with the object's structure (empty if fine)."""
    errors = []
    if not isinstance(p, dict):
        return ["line is not a JSON object"]
    keys = set(p)
    if keys != set(KEYS):
        missing, extra = set(KEYS) - keys, keys - set(KEYS)
        if missing:
            errors.append(f"missing keys: {sorted(missing)}")
        if extra:
            errors.append(f"unexpected keys: {sorted(extra)}")
    for key, typ in KEYS.items():
        if key in p and (not isinstance(p[key], typ) or isinstance(p[key], bool)):
            errors.append(f"{key!r} has type {type(p[key]).__name__}")
    if errors:
        return errors
    if not ID_RE.match(p["id"]):
        errors.append(f"id {p['id']!r} is not kebab-case")
    for key in ("title", "statement", "solution"):
        if not p[key].strip():
            errors.append(f"{key!r} is empty")
    if p["difficulty"] not in DIFFICULTIES:
        errors.append(f"difficulty {p['difficulty']!r} not in {DIFFICULTIES}")
    if p["time_limit_s"] <= 0:
        errors.append("time_limit_s must be positive")
    if p["memory_mb"] <= 0:
        errors.append("memory_mb must be positive")
    if len(p["examples"]) != N_EXAMPLES:
        errors.append(f"{len(p['examples'])} examples (expected {N_EXAMPLES})")
    if not MIN_TESTS <= len(p["tests"]) <= MAX_TESTS:
        errors.append(f"{len(p['tests'])} tests (expected {MIN_TESTS}-{MAX_TESTS})")
    for kind in ("examples", "tests"):
        for i, case in enumerate(p[kind]):
            where = f"{kind}[{i}]"
            if not isinstance(case, dict) or set(case) != {"input", "output"}:
                errors.append(f"{where} must be an object with exactly 'input' and 'output'")
                continue
            if not isinstance(case["input"], str) or not isinstance(case["output"], str):
                errors.append(f"{where}: input and output must be strings")
                continue
            size = len(case["input"].encode("utf-8"))
            if size >= MAX_INPUT_BYTES:
                errors.append(f"{where}: input is {size} bytes (limit {MAX_INPUT_BYTES})")
    return errors


def run_case(solution, case, time_limit):
    """Run the solution on one case; return (elapsed seconds, error message or None)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", solution],
            input=case["input"],
            capture_output=True,
            text=True,
            timeout=time_limit,
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"time limit exceeded ({time_limit}s)"
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return elapsed, f"exit status {proc.returncode}: {tail[0][:200]}"
    got, want = normalize(proc.stdout), normalize(case["output"])
    if got != want:
        return elapsed, "wrong answer, " + first_difference(got, want)
    return elapsed, None


def main(argv):
    path = DEFAULT_PATH
    only = set()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--id" and args:
            only.add(args.pop(0))
        elif arg in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        else:
            path = arg

    global_errors = []
    try:
        file_size = os.path.getsize(path)
        with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
            raw_lines = f.read().split("\n")
    except OSError as exc:
        print(f"FAIL cannot read {path}: {exc}")
        print("SUMMARY: 0/0 problems passed (file unreadable)")
        return 1
    if file_size > MAX_FILE_BYTES:
        global_errors.append(f"file is {file_size} bytes (limit {MAX_FILE_BYTES})")

    problems = []
    for lineno, line in enumerate(raw_lines, 1):
        if not line.strip():
            continue
        try:
            problems.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            global_errors.append(f"line {lineno}: invalid JSON ({exc})")

    if len(problems) < MIN_PROBLEMS:
        global_errors.append(f"only {len(problems)} problems (need at least {MIN_PROBLEMS})")
    seen = {}
    for lineno, p in problems:
        pid = p.get("id") if isinstance(p, dict) else None
        if isinstance(pid, str):
            if pid in seen:
                global_errors.append(f"duplicate id {pid!r} on lines {seen[pid]} and {lineno}")
            seen.setdefault(pid, lineno)

    per_difficulty = {d: 0 for d in DIFFICULTIES}
    passed = failed = runs = failed_runs = 0
    slowest_overall, slowest_id = 0.0, None
    for lineno, p in problems:
        label = p.get("id") if isinstance(p, dict) and isinstance(p.get("id"), str) else f"line-{lineno}"
        if only and label not in only:
            continue
        errors = check_schema(p)
        slowest = 0.0
        if isinstance(p, dict) and p.get("difficulty") in per_difficulty:
            per_difficulty[p["difficulty"]] += 1
        if not errors:
            cases = [("example", i, c) for i, c in enumerate(p["examples"])]
            cases += [("test", i, c) for i, c in enumerate(p["tests"])]
            for kind, i, case in cases:
                elapsed, err = run_case(p["solution"], case, p["time_limit_s"])
                runs += 1
                slowest = max(slowest, elapsed)
                if err:
                    failed_runs += 1
                    errors.append(f"{kind} {i + 1}: {err}")
            if slowest > slowest_overall:
                slowest_overall, slowest_id = slowest, label
        difficulty = p.get("difficulty", "?") if isinstance(p, dict) else "?"
        status = "FAIL" if errors else "ok"
        print(f"{status:4} {label:36} {str(difficulty):6} slowest {slowest:.3f}s", flush=True)
        for err in errors:
            print(f"     - {err}")
        if errors:
            failed += 1
        else:
            passed += 1

    for err in global_errors:
        print(f"FAIL {err}")
    total = passed + failed
    counts = ", ".join(f"{d} {n}" for d, n in per_difficulty.items())
    print(
        f"SUMMARY: {passed}/{total} problems passed ({counts}); "
        f"{runs - failed_runs}/{runs} runs ok; slowest run {slowest_overall:.3f}s"
        f"{f' ({slowest_id})' if slowest_id else ''}; file {file_size} bytes; "
        f"{len(global_errors)} file-level error(s)"
    )
    return 1 if failed or global_errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
