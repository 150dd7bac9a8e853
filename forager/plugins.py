"""Plug-ins: environments, reward functions, policies and prompt sets, from installed packages or from a folder.

One mechanism for every kind, whoever wrote them. A plug-in is a name and a `module:attribute`
target in one of the groups `forager.envs`, `forager.rewards`, `forager.policies`, `forager.prompts`:

- an installed package declares them as entry points (pyproject.toml):

      [project.entry-points."forager.envs"]
      "acme/FixCommand-v0" = "acme_env:FixCommandEnv"

- a folder of plug-ins (`forager --plugins DIR ...`, or `FORAGER_PLUGINS=DIR[:DIR...]`) holds modules
  and packages; each declares the same table as a module-level `ENTRY_POINTS`:

      ENTRY_POINTS = {"forager.envs": {"acme/FixCommand-v0": "acme_env:FixCommandEnv"}}

  The folder goes on `sys.path` and each of its modules is imported to read that table.

Every environment plug-in is registered with Gymnasium under its name (`gymnasium.make(name)`);
registering imports nothing (Gymnasium takes the target as a string). A plug-in that cannot be
imported is reported with its error (`forager envs list`, a warning in the log) and the rest load.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forager.core import ForagerError

log = logging.getLogger(__name__)

KINDS = {"envs": "forager.envs", "rewards": "forager.rewards", "policies": "forager.policies",
         "prompts": "forager.prompts"}
"""Plug-in kind -> its entry-point group."""
SINGULAR = {"envs": "env", "rewards": "reward", "policies": "policy", "prompts": "prompt set"}
"""Plug-in kind -> one of it, in messages."""
PLUGINS_ENV = "FORAGER_PLUGINS"


@dataclass(frozen=True)
class Plugin:
    """One plug-in: its kind, its name, what it points at and where it was declared."""

    kind: str
    name: str
    target: str
    origin: str
    """`package NAME VERSION` for an entry point, or the file of a folder plug-in."""

    def load(self) -> Any:
        """The object the plug-in points at (imported now); a ForagerError naming the plug-in if that fails."""
        module_name, _, attribute = self.target.partition(":")
        try:
            value: Any = importlib.import_module(module_name)
            for part in attribute.split(".") if attribute else []:
                value = getattr(value, part)
            return value
        except Exception as err:  # noqa: BLE001 - any failure of a plug-in's import is reported as its own
            raise ForagerError(f"{SINGULAR[self.kind]} plug-in {self.name!r} ({self.target}, from {self.origin}) "
                               f"cannot be loaded: {type(err).__name__}: {err}") from err

    def description(self) -> str:
        """The first paragraph of the object's docstring on one line ("" when it has none)."""
        doc = (getattr(self.load(), "__doc__", None) or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


@dataclass(frozen=True)
class Broken:
    """A plug-in, or a folder module declaring plug-ins, that failed to load, and why."""

    kind: str
    """The plug-in's kind, or "" for a folder module that failed before declaring anything."""
    name: str
    origin: str
    error: str


@dataclass
class Plugins:
    """What is installed: the plug-ins by kind, and those that failed to load."""

    found: list[Plugin] = field(default_factory=list)
    broken: list[Broken] = field(default_factory=list)

    def of(self, kind: str) -> list[Plugin]:
        return [plugin for plugin in self.found if plugin.kind == kind]

    def get(self, kind: str, name: str) -> Plugin:
        """The plug-in `name` of `kind`, or a ForagerError listing the close matches."""
        for plugin in self.of(kind):
            if plugin.name == name:
                return plugin
        for broken in self.broken:
            if broken.kind in (kind, "") and broken.name == name:
                raise ForagerError(
                    f"{SINGULAR[kind]} plug-in {name!r} failed to load ({broken.origin}): {broken.error}")
        raise ForagerError(unknown_name(SINGULAR[kind], name, [plugin.name for plugin in self.of(kind)]))

    def check(self) -> None:
        """Load every plug-in once, moving those that fail to `broken` (for the list commands)."""
        kept = []
        for plugin in self.found:
            try:
                plugin.load()
                kept.append(plugin)
            except ForagerError as err:
                self.broken.append(Broken(plugin.kind, plugin.name, plugin.origin, str(err.__cause__ or err)))
        self.found = kept


def unknown_name(what: str, name: str, known: Iterable[str]) -> str:
    """`unknown WHAT 'NAME'`, with the close matches (or everything known, when there are few)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if close:
        return f"unknown {what} {name!r}; did you mean {', '.join(close)}?"
    if known:
        return f"unknown {what} {name!r}; known: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
    return f"unknown {what} {name!r}: none is installed"


def plugin_folders(extra: Iterable[str | Path] = ()) -> list[Path]:
    """The folders of plug-ins: `extra` (the `--plugins` option), then those in FORAGER_PLUGINS."""
    named = [*extra, *[part for part in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if part]]
    return list(dict.fromkeys(Path(folder).expanduser().resolve() for folder in named))


_lock = threading.Lock()
_cache: dict[tuple[Path, ...], Plugins] = {}
_discovering = threading.local()
_warned: set[tuple[str, str]] = set()


def discover(folders: Iterable[str | Path] | None = None, *, refresh: bool = False) -> Plugins:
    """Every plug-in from the installed packages' entry points and from the plug-in folders (cached).

    A folder module that imports gymnasium has Forager register its environments, which asks for the
    plug-ins again while they are being found: that nested call gets none (the outer one registers).
    """
    if getattr(_discovering, "active", False):
        return Plugins()
    chosen = tuple(plugin_folders(folders or ()))
    with _lock:
        if refresh or chosen not in _cache:
            _discovering.active = True
            try:
                plugins = Plugins()
                _from_entry_points(plugins)
                for folder in chosen:
                    _from_folder(plugins, folder)
            finally:
                _discovering.active = False
            for broken in plugins.broken:
                if (broken.name, broken.origin) not in _warned:  # once per process
                    _warned.add((broken.name, broken.origin))
                    log.warning("plug-in %s (%s) skipped: %s", broken.name, broken.origin, broken.error)
            _cache[chosen] = plugins
        return _cache[chosen]


def _from_entry_points(plugins: Plugins) -> None:
    for kind, group in KINDS.items():
        for entry in importlib.metadata.entry_points(group=group):
            dist = getattr(entry, "dist", None)
            origin = f"package {dist.name} {dist.version}" if dist is not None else f"entry point {group}"
            plugins.found.append(Plugin(kind, entry.name, entry.value, origin))


def _from_folder(plugins: Plugins, folder: Path) -> None:
    if not folder.is_dir():
        plugins.broken.append(Broken("", str(folder), str(folder), "not a folder"))
        return
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    for path in sorted(folder.iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        if not name.isidentifier() or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
            continue
        try:
            table = getattr(importlib.import_module(name), "ENTRY_POINTS", None) or {}
            if not isinstance(table, Mapping):
                raise TypeError(f"ENTRY_POINTS is a {type(table).__name__}, not a mapping of group to {{name: target}}")
        except Exception as err:  # noqa: BLE001 - a broken module is reported, the others load
            plugins.broken.append(Broken("", name, str(path), f"{type(err).__name__}: {err}"))
            continue
        for group, entries in table.items():
            kind = next((k for k, g in KINDS.items() if g == group), None)
            if kind is None:
                groups = ", ".join(KINDS.values())
                plugins.broken.append(Broken("", name, str(path), f"unknown group {group!r}; use {groups}"))
                continue
            for plugin_name, target in dict(entries).items():
                plugins.found.append(Plugin(kind, str(plugin_name), str(target), str(path)))


def register_env_plugins(folders: Iterable[str | Path] | None = None) -> list[str]:
    """Register every environment plug-in with Gymnasium under its name; returns the ids registered."""
    import gymnasium

    registered = []
    for plugin in discover(folders).of("envs"):
        if plugin.name not in gymnasium.registry:
            gymnasium.register(id=plugin.name, entry_point=plugin.target)
            registered.append(plugin.name)
    return registered


__all__ = ["KINDS", "PLUGINS_ENV", "SINGULAR", "Broken", "Plugin", "Plugins", "discover", "plugin_folders",
           "register_env_plugins", "unknown_name"]
