"""Forager's Gymnasium ids, registered without making `import forager` pay for gymnasium.

Gymnasium's convention is that importing a package registers its environments (`import forager`,
then `gymnasium.make("forager/SWE-v0")`). Importing gymnasium also imports numpy, and most of
Forager (the task store, the trajectory tools, the CLI's light commands) needs neither, so the ids
are registered the moment gymnasium is imported: at once when it already is, otherwise by a
one-shot import hook. Entry points are strings, so registering imports no environment code.
"""

from __future__ import annotations

import importlib.abc
import logging
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

SWE_ENV_ID = "forager/SWE-v0"
ENVIRONMENTS: dict[str, str] = {SWE_ENV_ID: "forager.envs.swe:SWEEnv"}
"""Gymnasium id -> entry point of every environment the framework itself provides."""


def register_environments() -> None:
    """Register every id in ENVIRONMENTS, then every environment plug-in, with gymnasium (idempotent)."""
    import gymnasium

    for env_id, entry_point in ENVIRONMENTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, nondeterministic=True)
    from forager.plugins import register_env_plugins

    try:
        register_env_plugins()
    except Exception:  # noqa: BLE001 - a broken plug-in set must not break `import gymnasium`
        logging.getLogger(__name__).warning("registering the environment plug-ins failed", exc_info=True)


class _RegisterAfterGymnasium(importlib.abc.MetaPathFinder):
    """Finds gymnasium like the rest of sys.meta_path would, and registers once its module has run."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the find_spec below from finding this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            register_environments()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader
        return spec


def register_when_gymnasium_loads() -> None:
    """Register now if gymnasium is imported, else as soon as it is."""
    if "gymnasium" in sys.modules:
        register_environments()
    elif not any(isinstance(finder, _RegisterAfterGymnasium) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterGymnasium())
