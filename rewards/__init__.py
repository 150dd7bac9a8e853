"""The reward functions and shaping terms Forager ships as plug-ins (installed as `forager_rewards`, declared as
`forager.rewards` entry points in Forager's pyproject.toml: the mechanism any other package uses). See README.md."""
