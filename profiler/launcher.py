"""What every multi-process start here shares: a free port, the environment of ranks (offline; CPU ranks), the torchrun
command line and the cause of a failed run. Used by `profiler.launch` (profile runs), `runner.launcher`
(`ftplan run`) and `runner.trial` (measured tune trials); runner may import profiler, not the reverse.

CPU ranks talk over gloo with DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu,
deepspeed/accelerator/real_accelerator.py) and one OpenMP thread each, so that N processes share the
cores instead of oversubscribing them; a free port avoids clashing with other runs on the machine.
Rendezvous options are torchrun's (torch/distributed/run.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import NoReturn

from planner.gpus import is_cpu
from planner.strategy import TrainConfig


def is_cpu_plan(cfg: TrainConfig) -> bool:
    return is_cpu(cfg.cluster.gpu)


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Hugging Face's offline switches. No run reaches the network: a plan's model is a local directory and its data a
# local file, and what a library would fetch on its own at run time is refused. huggingface_hub reads HF_HUB_OFFLINE
# (or TRANSFORMERS_OFFLINE) once, at import (huggingface_hub/constants.py); transformers and `kernels` go through it,
# and datasets' HF_DATASETS_OFFLINE defaults to it (datasets/config.py). The case in point: bitsandbytes 0.50's CPU
# backend calls `kernels.get_kernel("kernels-community/quantization-bitsandbytes")` at import on AVX512-BF16 CPUs
# (bitsandbytes/backends/cpu/ops.py), which online asks the Hub whether the publisher is trusted and downloads the
# kernel; offline it looks in the local cache only (kernels/_internals/hf_hub.py `_check_trust_remote_code` skips
# the Hub's trust check there: what is cached was fetched by a trusted run or by the user).
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with HF_HUB_OFFLINE=1, unless the user set any of the offline
    switches (OFFLINE_VARS): then theirs stand, all three as given (HF_HUB_OFFLINE=0 with our
    HF_DATASETS_OFFLINE=1 would take datasets offline against their choice)."""
    env = dict(os.environ if base is None else base)
    if not any(key in env for key in OFFLINE_VARS):
        env["HF_HUB_OFFLINE"] = "1"
    return env


def rank_env(cfg: TrainConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) offline (`offline_env`), with what CPU ranks of `cfg` need."""
    env = offline_env(base)
    if is_cpu_plan(cfg):
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        if cfg.world_size > 1:
            env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun_command(*, nproc_per_node: int, nnodes: int = 1, master_port: int, node_rank: str = "0",
                     master_addr: str = "127.0.0.1") -> list[str]:
    """`python -m torch.distributed.run` with the rendezvous options; the caller appends `-m module args`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
           "--nproc_per_node", str(nproc_per_node), "--master_port", str(master_port)]
    if nnodes > 1:
        cmd += ["--node_rank", node_rank]
    return cmd + ["--master_addr", master_addr]


def failure_cause(text: str) -> str:
    """The most telling line of a failed run's output: a rank's exception, else the last exception line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rank_error = re.compile(r"^\[rank\d+\]:\s*([\w.]*(Error|Exception|Interrupt)\b.*)")
    for ln in lines:
        hit = rank_error.match(ln)
        if hit:
            return hit.group(1)[:300]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head and "ChildFailedError" not in head:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def exit_worker(main: Callable[[], object]) -> NoReturn:
    """Run a launched rank's `main` and leave without interpreter finalization, with its exit status.

    A rank's work is done (and saved) when `main` returns; what is left is the interpreter's teardown, in which
    torch's C++ objects still alive (a gloo process group's threads, DDP's reducer held by reference cycles) are
    destroyed in whatever order finalization reaches them, and a rank can abort there ("terminate called without
    an active exception", SIGABRT: seen in a 2-rank `ftplan run` after it had written its summary, and in CI) and
    turn a finished run into a failed one. So stdout, stderr and logging are flushed and the process ends with
    os._exit (as multiprocessing's children end, Lib/multiprocessing/popen_fork.py): no atexit handler nor
    finalizer runs after the work. An exception still prints its traceback and ends with status 1; SystemExit
    keeps its code, and a text code is printed as the interpreter would."""
    import logging
    import traceback

    code = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - any failure: its traceback, then status 1, as the interpreter would
        traceback.print_exc()
        code = 1
    logging.shutdown()
    _flush_output()
    os._exit(code)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing left to flush
            stream.flush()


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def run_in_fork(work: Callable[[], object]) -> int:
    """Run `work` in a child forked from this process and return the child's exit status (0: it returned).

    The child starts with what this process has imported (torch, transformers, DeepSpeed: seconds each) and
    nothing an earlier piece of work left behind: its own allocator, tensors, process group and DeepSpeed
    state. Its glibc heap starts as this process's, so its steps fault pages in as a fresh process's do (a LoRA
    DDP step: 8-19k minor faults per step either way, from the heap's top trimmed and grown again; 0-1 in a process
    that had run a full fine-tuning plan before); timed back to back, forked and fresh runs of one plan agree within
    the machine's noise (README, rank order, session 13). It ends as a launched rank does (`exit_worker`) and
    dies with its parent (PR_SET_PDEATHSIG, prctl(2)), so a rank that torchrun kills leaves no child behind.
    Linux only (prctl); never after CUDA has been initialized in this process (a forked child cannot use it)."""
    _flush_output()  # or the child would print this process's buffered output again
    pid = os.fork()
    if pid == 0:
        exit_worker(partial(_die_with_parent_then, work))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _die_with_parent_then(work: Callable[[], object]) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    work()
