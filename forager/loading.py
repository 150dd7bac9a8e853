"""Backends by name: a short name from a table, or a `module:Attribute` path to a user's own."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from forager.core import ForagerError


def load_named(name: str, table: Mapping[str, str], what: str, *, install_hint: str = "",
               plugins: str | None = None) -> Any:
    """The object `table[name]` points at, a plug-in of kind `plugins` (`forager.plugins`) by that name,
    or `name` itself as `module:Attribute`; imported only now.

    `what` names the kind in errors ("policy", "runtime"); `install_hint` follows an import error.
    """
    target = table.get(name, name)
    if ":" not in target and plugins is not None:
        from forager.plugins import discover, unknown_name

        found = discover()
        if any(plugin.name == name for plugin in found.of(plugins)):
            return found.get(plugins, name).load()
        known = [*table, *(plugin.name for plugin in found.of(plugins))]
        raise ForagerError(f"{unknown_name(what, name, known)} (or give a `module:Class` path)")
    if ":" not in target:
        raise ForagerError(f"unknown {what} {name!r}: use one of {', '.join(table)} or a `module:Class` path")
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except ImportError as err:
        raise ForagerError(f"{what} {name!r} cannot be loaded: {err}{install_hint}") from err
    except AttributeError as err:
        raise ForagerError(f"{what} {name!r}: {module_name} has no {attribute}") from err
