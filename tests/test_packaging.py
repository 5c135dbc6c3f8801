"""What a newcomer and a release do: the README's demo command in a fresh clone and a fresh
virtual environment, and the sdist and wheel of ``python -m build`` installed and run from an
unrelated directory. Needs git, network access to the package index, and a C compiler."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = re.compile(
    r"added ([\d,]+) = fetched ([\d,]+) \+ left ([\d,]+) \+ dropped ([\d,]+)(?: \+ replaced "
    r"([\d,]+))?: holds"
)

pytestmark = pytest.mark.slow


def readme_command(n: int) -> str:
    """The first line of the README's ``n``-th ```sh block (1-based), as .ci/run reads it."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    return blocks[n - 1].splitlines()[0]


def env_without_tree(namespace: str) -> dict[str, str]:
    """The environment of a user: no PYTHONPATH pointing at a source tree, the test namespace."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYMQUEUE_NAMESPACE"] = namespace
    return env


def sh(cmd: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"{cmd!r} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


def check_demo(out: str, venv: Path) -> None:
    m = IDENTITY.search(out)
    assert m, out
    added, fetched, left, dropped, replaced = (int((g or "0").replace(",", "")) for g in m.groups())
    assert added == fetched + left + dropped + replaced
    assert added > 0
    assert "killed consumer 0" in out
    assert "survivors carried on" in out
    package = re.search(r"demo \(package: (.*)\)", out)
    assert package, out
    assert Path(package.group(1)).is_relative_to(venv), "the demo did not run the installed package"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of this repository (its committed HEAD)."""
    where = tmp_path_factory.mktemp("clone") / "pymqueue"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(where)], check=True,
        timeout=120,
    )  # fmt: skip
    return where


def test_readme_demo_command_in_a_fresh_clone(clone: Path, tmp_path: Path, namespace: str) -> None:
    env = env_without_tree(namespace)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    command = readme_command(1)
    assert "pymqueue demo" in command
    out = sh(f". {venv}/bin/activate && {command}", cwd=clone, env=env)
    check_demo(out, venv)
    assert (clone / "pymqueue-demo.db").exists()
    # From the checkout's root, `python3 -m pymqueue` finds the source folder, which has no
    # compiled engine: one sentence says what to do.
    bad = subprocess.run(
        [str(venv / "bin" / "python3"), "-m", "pymqueue", "ls"], cwd=clone, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "is a source checkout without its compiled engine" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_sdist_and_wheel_build_install_and_run_anywhere(
    clone: Path, tmp_path: Path, namespace: str
) -> None:
    env = env_without_tree(namespace)
    dist = tmp_path / "dist"
    sh(f"{sys.executable} -m build --outdir {dist} .", cwd=clone, env=env)
    (sdist,) = dist.glob("pymqueue-*.tar.gz")
    (wheel,) = dist.glob("pymqueue-*.whl")

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    sources = re.search(r"SOURCES = \[(.*?)\]", (clone / "csrc/pmq_build.py").read_text())
    assert sources
    needed = {f"csrc/{s}" for s in re.findall(r'"([\w.]+)"', sources.group(1))}
    needed |= {"csrc/pmq_build.py", "csrc/pmq.h", "csrc/pmq_internal.h", "setup.py", "LICENSE"}
    assert needed <= names, f"missing from the sdist: {needed - names}"

    with zipfile.ZipFile(wheel) as whl:
        wnames = whl.namelist()
        meta = next(whl.read(n) for n in wnames if n.endswith(".dist-info/METADATA")).decode()
    assert any(re.fullmatch(r"pymqueue/_pmq_c\..*\.so", n) for n in wnames)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wnames)
    assert "License-Expression: MIT" in meta
    assert "License ::" not in meta  # the deprecated classifier
    assert "Requires-Python: >=3.11" in meta
    version = re.search(r'__version__ = "([^"]+)"', (clone / "pymqueue/__init__.py").read_text())
    assert version
    assert f"Version: {version.group(1)}\n" in meta

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for artifact in (sdist, wheel):  # pip builds the wheel from the sdist, as for a release
        venv = tmp_path / f"venv-{artifact.suffix.strip('.')}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        sh(f"{venv}/bin/python3 -m pip install -q {artifact}", cwd=elsewhere, env=env)
        out = sh(
            f"{venv}/bin/pymqueue demo --items 1500 --rate 0 --db {artifact.name}.db",
            cwd=elsewhere, env=env,
        )  # fmt: skip
        check_demo(out, venv)
