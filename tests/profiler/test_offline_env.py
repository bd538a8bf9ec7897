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
