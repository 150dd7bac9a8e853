"""Command-line options several commands share (`collect`, `eval run`, `eval swebench`): declared once, so
their names, defaults and help read the same everywhere."""

from __future__ import annotations


import typer

POLICY = typer.Option(None, help="reference, replay, openai, hf, a plug-in or serving recipe (`forager policies list`, e.g. qwen3-32b) or module:Class (default: openai when a server is configured, else reference).")
MODEL = typer.Option(None, help="Model name (openai) or path/hub name (hf); or FORAGER_MODEL.")
BASE_URL = typer.Option(None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1; or FORAGER_BASE_URL.")
API_KEY = typer.Option(None, help="API key; or FORAGER_API_KEY / OPENAI_API_KEY.")
TEMPERATURE = typer.Option(None, help="Sampling temperature.")
POLICY_OPTION = typer.Option([], "--policy-option", help="KEY=VALUE passed to the policy (JSON values allowed); repeatable.")
RAY_ADDRESS = typer.Option(None, help="Run the episodes on Ray: auto, ray://HOST:PORT, or local.")
CONFIG = typer.Option(None, help="YAML agent config (prompts, tool format, budgets), optionally under `agent:`.")
PROMPTS = typer.Option(None, help="A prompt set by name (`forager prompts list`: default, cwm, minimal) or a YAML file of its templates.")
MAX_TURNS = typer.Option(None, help="Turn budget per episode (default 64).")
ALLOW_MIXED = typer.Option(False, help="Allow a different policy/config in an existing --out.")
ENV = typer.Option(None, "--env", help="A registered environment id to run instead of forager/SWE-v0 (`forager envs list`).")
DOCKER_HOSTS = typer.Option([], "--docker-host", help="A Docker engine for the env containers (tcp://HOST:2375, ssh://USER@HOST, unix:///PATH), holding the tasks' images; repeatable: worker i uses the i-th modulo their number (default: DOCKER_HOST or the local socket).")
SAMPLES = typer.Option(1, "--samples", "-k", min=1, help="Samples per task (K): pass@1 is averaged over them, pass@k up to K.")

__all__ = ["ALLOW_MIXED", "API_KEY", "BASE_URL", "CONFIG", "DOCKER_HOSTS", "ENV", "MAX_TURNS", "MODEL", "POLICY",
           "POLICY_OPTION", "PROMPTS", "RAY_ADDRESS", "SAMPLES", "TEMPERATURE"]
