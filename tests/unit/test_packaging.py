"""A plain (non-editable) install ships every package, the templates and the cluster configs."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _packages_in_tree():
    found = set()
    for top in ("launcher", "refinenet"):
        for init in (REPO / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO).parts))
    return found


def test_every_package_is_listed_in_pyproject():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_in_tree() <= listed


def test_wheel_install_finds_templates_and_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(REPO)], check=True, capture_output=True)
    code = ("import launcher.resources as r, sys; "
            "t = sorted(p.name for p in r.templates_dir().glob('*.j2')); "
            "c = sorted(p.name for p in r.cluster_configs_dir().glob('*.yaml')); "
            "assert str(r.templates_dir()).startswith(sys.argv[1]), r.templates_dir(); "
            "print(len(t), len(c))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "site")})
    n_templates, n_configs = map(int, out.stdout.split())
    assert n_templates == len(list((REPO / "templates").glob("*.j2")))
    assert n_configs == len(list((REPO / "cluster_configs").glob("*.yaml")))
