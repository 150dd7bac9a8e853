"""Worker threads: run one function in N threads, wait for all of them, and hand back what they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_workers(work: Callable[[], None], count: int, name: str, *, daemon: bool = False) -> list[BaseException]:
    """Run `work` in `count` threads named `name-0`, `name-1`, ... and wait for them; the exceptions they raised.

    A worker that raises does not stop the others (a caller that wants that sets its own stop flag).
    """
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as err:  # noqa: BLE001 - handed to the caller, in its own thread
            errors.append(err)

    threads = [threading.Thread(target=guarded, name=f"{name}-{n}", daemon=daemon) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # short joins keep the main thread responsive to Ctrl-C
    return errors
