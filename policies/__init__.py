"""The policies Forager ships as plug-ins (installed as `forager_policies`): serving recipes for the models users
train, declared as `forager.policies` entry points, and prompt sets, declared as `forager.prompts` entry points, in
Forager's pyproject.toml: the mechanism any other package uses. See README.md."""
