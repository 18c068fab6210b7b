"""Packaging beyond what pyproject.toml can say: the repository's top-level configs/
folder ships inside the wheel as package data ``marl_two_tower/configs/*.yaml``
(marl_two_tower.config.find_config_dir reads it there when installed), so ``demo``,
``--config base.yaml`` and friends work from a non-editable install too."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["marl_two_tower*"]), "marl_two_tower.configs"],
    package_dir={"marl_two_tower.configs": "configs"},
)
