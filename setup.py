"""Finds the packages of `maest`; everything else about the package is in setup.cfg.

The folders at the top of the repository are the subpackages of `maest` (setup.cfg's `package_dir`). setuptools'
`find:` names what it finds after the folder it searched (`modeling.labels`), not after the package that folder is
mapped to (`maest.modeling.labels`), so this file runs the same search in each mapped folder and adds the prefix.
Every folder below is a package, with or without `__init__.py` (PEP 420 namespace packages): the data folders
(labels, model card templates, the `evaluate` metric scripts) are then packages whose files setup.cfg's
`package_data` ships, and a new subpackage cannot be left out of the wheel.
"""

import configparser
from pathlib import Path

from setuptools import find_namespace_packages, setup

NOT_PACKAGES = ["__pycache__", "*.__pycache__", "*.__pycache__.*"]


def mapped_packages(setup_cfg: Path) -> list[str]:
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    packages = []
    for line in config["options"]["package_dir"].strip().splitlines():
        package, folder = (part.strip() for part in line.split("=", 1))
        folder = setup_cfg.parent / folder
        packages.append(package)
        packages += [f"{package}.{found}" for found in find_namespace_packages(str(folder), exclude=NOT_PACKAGES)]
    return packages


setup(packages=mapped_packages(Path(__file__).resolve().parent / "setup.cfg"))
