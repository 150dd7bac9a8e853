"""Enumerating mutate-fix candidates on the host: seconds per module, for big real modules.

    python bench/mutate_enumerate.py [FILE ...]

Without files it times standard-library modules of 2,600 to 6,400 lines (the size of inflect's
4,000-line `__init__.py`). Each module is enumerated with every operator, as `forager tasks mutate`
does. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import time
from pathlib import Path

from forager.tasks.mutate import enumerate_mutations

STDLIB = ("argparse.py", "typing.py", "_pydecimal.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    files = args.files or [Path(sysconfig.get_paths()["stdlib"]) / name for name in STDLIB]
    rows = {}
    for path in files:
        text = path.read_text()
        started = time.perf_counter()
        mutations = enumerate_mutations(text)
        seconds = time.perf_counter() - started
        lines = text.count("\n")
        rows[path.name] = {"lines": lines, "mutations": len(mutations), "seconds": round(seconds, 2)}
        print(f"{path.name:20s} {lines:6d} lines {len(mutations):6d} mutations {seconds:6.2f}s")
    worst = max(r["seconds"] * 1000 / max(r["lines"], 1) for r in rows.values())
    print(json.dumps({"modules": rows, "seconds_per_1000_lines_max": round(worst, 3),
                      "seconds_for_4000_lines": round(worst * 4, 2)}))


if __name__ == "__main__":
    main()
