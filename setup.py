"""Packages beyond pyproject.toml's reach: Forager's own plug-ins, kept in top-level folders (envs/, rewards/,
policies/) and installed under names of their own (forager_envs, forager_rewards, forager_policies), so that nothing
as generic as `envs` lands in site-packages."""

from setuptools import find_packages, setup

SHIPPED = {"forager_envs": "envs", "forager_rewards": "rewards", "forager_policies": "policies"}

packages = find_packages(include=["forager", "forager.*"], exclude=["forager.assets", "forager.assets.*"])
package_dir: dict[str, str] = {}
for name, folder in SHIPPED.items():
    for sub in ["", *find_packages(folder)]:
        full = f"{name}.{sub}" if sub else name
        packages.append(full)
        package_dir[full] = f"{folder}/{sub.replace('.', '/')}" if sub else folder

setup(packages=packages, package_dir=package_dir)
