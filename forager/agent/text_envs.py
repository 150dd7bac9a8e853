"""Plug-in environments that speak text, made by their Gymnasium id, and the tasks they run."""

from __future__ import annotations

from typing import Any

from forager.core import ForagerError


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


__all__ = ["make_text_env", "text_env_tasks"]
