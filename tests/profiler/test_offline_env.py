"""The children the runner and profiler start are offline (profiler/launcher.py OFFLINE_VARS): HF_HUB_OFFLINE=1,
which huggingface_hub reads at import, unless the user set an offline switch of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner.build import build_config
from profiler.launcher import OFFLINE_VARS, offline_env, rank_env

_HUB_OFFLINE = "import huggingface_hub.constants as c, datasets.config as d; print(c.HF_HUB_OFFLINE, d.HF_HUB_OFFLINE)"


def _clean() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}


@pytest.mark.parametrize("gpus", ["2xCPU", "2xH100"])
def test_ranks_start_offline_on_every_device(gpus: str) -> None:
    cfg = build_config(model="llama-3.2-1b", gpus=gpus, check=False)
    env = rank_env(cfg, _clean())
    assert env["HF_HUB_OFFLINE"] == "1"
    assert not {"TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"} & set(env)  # both follow the hub's switch
    assert (env.get("DS_ACCELERATOR") == "cpu") is (gpus == "2xCPU")
    # what a child's libraries make of it
    out = subprocess.run([sys.executable, "-c", _HUB_OFFLINE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("user", [{"HF_HUB_OFFLINE": "0"}, {"TRANSFORMERS_OFFLINE": "0"},
                                  {"HF_DATASETS_OFFLINE": "1"}])
def test_a_users_offline_switch_stands(user: dict[str, str]) -> None:
    env = offline_env({**_clean(), **user})
    assert {k: env[k] for k in OFFLINE_VARS if k in env} == user


def _report_offline(rank: int, port: int, queue) -> None:
    import os

    queue.put(os.environ.get("HF_HUB_OFFLINE"))


def test_the_device_fits_spawned_ranks_start_offline_and_the_parent_is_left_as_it_was(monkeypatch) -> None:
    # the device fit's ranks are multiprocessing children (profiler/fit_helpers.py _on_ranks), which copy os.environ
    from profiler.fit_helpers import _on_ranks

    for key in OFFLINE_VARS:
        monkeypatch.delenv(key, raising=False)
    assert _on_ranks(_report_offline, 2) == ["1", "1"]
    assert "HF_HUB_OFFLINE" not in __import__("os").environ
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's own switch stands
    assert _on_ranks(_report_offline, 1) == ["0"]
