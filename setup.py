"""Package discovery: every package under clefctl/ (setuptools' find), plus clefctl.prompts_data, which
is mapped from the top-level prompts/ folder (pyproject.toml's package-dir) and so cannot be found by a
scan. The rest of the metadata is in pyproject.toml; tests/test_wheel.py installs the built wheel."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["clefctl", "clefctl.*"]) + ["clefctl.prompts_data"])
