"""The environments Forager ships as plug-ins (installed as `forager_envs`, declared as `forager.envs` entry points
in Forager's pyproject.toml: the mechanism any other package uses)."""
