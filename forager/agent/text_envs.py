"""Plug-in environments, made by their Gymnasium id, and the tasks they run.

Two families: a SWE environment (a subclass of SWEEnv, say forager/SWE-TestGen-v0) runs Tasks on
the collection's runtime, reward and warm pool like forager/SWE-v0; any other speaks text and brings
its own task ids (`text_env_tasks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forager.core import ForagerError, Task
from forager.envs.swe import SWEEnv

if TYPE_CHECKING:
    from forager.agent.config import CollectConfig


def make_text_env(env_id: str) -> Any:
    """`gymnasium.make(env_id)` with the plug-ins registered, or a ForagerError listing the close ids."""
    import gymnasium

    from forager.plugins import register_env_plugins, unknown_name

    register_env_plugins()
    if env_id not in gymnasium.registry:
        raise ForagerError(unknown_name("environment", env_id, gymnasium.registry))
    try:
        return gymnasium.make(env_id)
    except Exception as err:  # noqa: BLE001 - the plug-in's constructor: say whose it is
        raise ForagerError(f"environment {env_id!r} could not be made: {type(err).__name__}: {err}") from err


def env_class(env_id: str) -> Any:
    """The class (or factory) Gymnasium's registry names for `env_id`, imported; a ForagerError for an unknown id."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    from forager.plugins import register_env_plugins, unknown_name

    register_env_plugins()
    if env_id not in gymnasium.registry:
        raise ForagerError(unknown_name("environment", env_id, gymnasium.registry))
    entry = gymnasium.registry[env_id].entry_point
    try:
        return load_env_creator(entry) if isinstance(entry, str) else entry
    except Exception as err:  # noqa: BLE001 - the plug-in's import: say whose it is
        raise ForagerError(f"environment {env_id!r} ({entry}) cannot be loaded: {type(err).__name__}: {err}") from err


def swe_env_class(env_id: str | None) -> type[SWEEnv] | None:
    """The SWEEnv subclass `env_id` names (SWEEnv itself for None or forager/SWE-v0), or None for a text env."""
    from forager.registration import SWE_ENV_ID

    if env_id is None or env_id == SWE_ENV_ID:
        return SWEEnv
    cls = env_class(env_id)
    return cls if isinstance(cls, type) and issubclass(cls, SWEEnv) else None


def prepare_tasks(tasks: list[Task] | list[str], config: CollectConfig) -> list[Task] | list[str]:
    """The tasks as the collection's env runs them: a SWE environment's own form of each Task
    (`SWEEnv.prepare_tasks`; the policy then sees what the env runs), a text environment's ids as they are."""
    cls = swe_env_class(config.env_id)
    if cls is None or not tasks or not isinstance(tasks[0], Task):
        return list(tasks)
    return cls.prepare_tasks([t for t in tasks if isinstance(t, Task)], config.runtime)


def text_env_tasks(env_id: str, episodes: int | None = None) -> list[str]:
    """The task ids of a plug-in env (its `task_ids`), else `seed:0` ... `seed:N-1` for `episodes` N."""
    env = make_text_env(env_id)
    try:
        ids = getattr(env.unwrapped, "task_ids", None)
        ids = ids() if callable(ids) else ids
    finally:
        env.close()
    if ids:
        return [str(i) for i in ids][:episodes] if episodes else [str(i) for i in ids]
    if not episodes:
        raise ForagerError(f"{env_id} has no `task_ids`: say how many episodes to run (--episodes N)")
    return [f"seed:{i}" for i in range(episodes)]


__all__ = ["env_class", "make_text_env", "prepare_tasks", "swe_env_class", "text_env_tasks"]
