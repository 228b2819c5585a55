"""The conda environment.yml and pyproject.toml pin the same packages at the same versions."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _norm(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("==")
    return name.strip().lower().replace("_", "-"), version.strip()


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml must have exactly one pip: section"
    assert dict(map(_norm, project)) == dict(map(_norm, pip_lists[0]))


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unpinned = [d for d in project if "==" not in d]
    assert not unpinned, f"unpinned dependencies: {unpinned}"


def test_makefile_installs_the_pinned_torch():
    make = (ROOT / "Makefile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pkg in ("torch", "torchvision"):
        pin = next(d for d in project if _norm(d)[0] == pkg)
        assert pin in make, f"Makefile must install {pin} before the package"
