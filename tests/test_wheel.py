"""A normal install works: the wheel built from this tree is installed (not ``-e``) into a fresh venv and
every command's ``--help`` runs from it, in a folder away from the source tree.

The venv gets the wheel with its own pip and ``--no-deps``; the dependencies come from the interpreter
running the tests through a ``.pth`` line added after the venv's own site-packages, so the installed
clefctl wins over the editable one. Offline: ``pip wheel --no-build-isolation`` builds with the
setuptools the test extra installs (without it, pip builds in isolation, which needs the registry).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# run inside the installed venv: every command and subcommand's --help through click, one process
_HELP_ALL = r"""
import sys, click, clefctl
from click.testing import CliRunner
from clefctl.cli import cli, COMMANDS
assert clefctl.__file__.startswith(sys.prefix), clefctl.__file__
from clefctl.prompts import load_prompts
assert load_prompts("bp4d").class_ids
runner = CliRunner()
done = []
def walk(path, cmd):
    res = runner.invoke(cli, path + ["--help"], catch_exceptions=True)
    if res.exit_code != 0:
        print("FAILED", " ".join(path), res.output, repr(res.exception), file=sys.stderr)
        sys.exit(1)
    done.append(" ".join(path))
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            walk(path + [name], cmd.get_command(ctx, name))
for name in sorted(COMMANDS):
    walk([name], cli.get_command(click.Context(cli), name))
print("\n".join(done))
"""


def _copy_source(dst: Path) -> None:
    """The files a build reads, without build/ or egg-info left over from other builds."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "clefctl", dst / "clefctl", ignore=ignore)
    shutil.copytree(ROOT / "prompts", dst / "prompts", ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)


def test_built_wheel_installs_and_every_command_helps(tmp_path):
    src, wheels, work = tmp_path / "src", tmp_path / "wheels", tmp_path / "cwd"
    work.mkdir()
    _copy_source(src)
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels),
                            str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("clefctl-*.whl")

    # every module and data file of the source tree is in the wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clefctl").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    wanted |= {f"clefctl/prompts_data/{p.name}" for p in (ROOT / "prompts").glob("*.yaml")}
    assert not wanted - names, f"missing from the wheel: {sorted(wanted - names)}"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    Path(purelib, "zz_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True, cwd=work)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["CLEF_WORKSPACE"] = str(tmp_path / "ws")
    script = venv / "bin" / "clefctl"
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=work, env=env)
    assert top.returncode == 0, top.stderr
    assert "predict" in top.stdout
    every = subprocess.run([str(py), "-c", _HELP_ALL], capture_output=True, text=True, cwd=work, env=env)
    assert every.returncode == 0, every.stderr[-3000:]
    helped = every.stdout.split("\n")
    for name in ("query", "rescore", "serve", "data prepare", "index build", "weights get"):
        assert name in helped
