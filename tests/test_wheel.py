"""The wheel works on its own: built from the sources (no network: `pip wheel --no-deps --no-build-isolation`),
installed without `-e` into a clean virtualenv, and run from outside the repository, `ftplan plan` and
`ftplan profile dry-run` of a tiny model import every module from the virtualenv. (A hand-kept package list
once left planner.engines and others out of the wheel: the installed CLI failed on import.)

The virtualenv sees the system's site-packages for the dependencies (torch, transformers, ...: nothing can be
downloaded here), and its own site-packages come first on sys.path; the system's editable ftplan, whose finder
comes after the path search, never answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ftplan", "planner", "profiler", "runner", "reports")
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 256, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the virtualenv's python, its site-packages, an environment without this checkout on PYTHONPATH)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # build from a copy of the sources, so the build leaves no build/ or egg-info in the checkout
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], root, env)
    (wheel,) = dist.glob("ftplan-*.whl")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)], root, env)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--ignore-installed", "-q", str(wheel)], root, env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                     env).stdout.strip())
    return python, site, {**env, "PATH": f"{env_dir / 'bin'}:{env['PATH']}"}


def test_the_wheel_holds_every_package_and_its_data(venv: tuple[Path, Path, dict[str, str]]) -> None:
    _, site, _ = venv
    sources = {p.relative_to(REPO).as_posix() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    installed = {p.relative_to(site).as_posix() for pkg in PACKAGES for p in (site / pkg).rglob("*.py")}
    assert sources <= installed, f"missing from the wheel: {sorted(sources - installed)[:10]}"
    for data in ("ftplan/web/index.html", "ftplan/web/app.js", "ftplan/web/style.css"):
        assert (site / data).is_file(), data
    (wheel,) = (site.parents[3] / "dist").glob("ftplan-*.whl")  # root/venv/lib/pythonX.Y/site-packages
    assert "planner/engines/zero.py" in zipfile.ZipFile(wheel).namelist()


def test_installed_cli_plans_and_dry_runs_from_the_virtualenv(venv: tuple[Path, Path, dict[str, str]],
                                                              tmp_path: Path) -> None:
    python, site, env = venv
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # the console script, as a user would type it
    plan = _run([str(python.parent / "ftplan"), "plan", "--model", "7b", "--gpus", "8xA800", "--json"], outside, env)
    assert json.loads(plan.stdout)["plans"]
    # a dry run of a tiny model, checking in the same process that every ftplan module came from the virtualenv
    model = outside / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    probe = ("import sys\n"
             "from ftplan import cli\n"
             "sys.argv = ['ftplan', 'profile', 'dry-run', '--model', 'tiny', '--seq-len', '32', '--json']\n"
             "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
             f"site = {str(site)!r}\n"
             "ours = {n: m.__file__ for n, m in list(sys.modules.items())\n"
             f"        if n.split('.')[0] in {PACKAGES!r} and getattr(m, '__file__', None)}}\n"
             "elsewhere = {n: f for n, f in ours.items() if not f.startswith(site)}\n"
             "assert 'profiler.dryrun' in ours and not elsewhere, elsewhere\n"
             "print('FROM-VENV', len(ours), file=sys.stderr)\n")
    done = _run([str(python), "-c", probe], outside, env)
    assert "FROM-VENV" in done.stderr
    dry = json.loads(done.stdout)
    assert dry["measured_peak_bytes"]["total"] > 0 and dry["predicted_peak_bytes"] > 0
