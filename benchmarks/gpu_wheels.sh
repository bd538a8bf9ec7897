#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on the device machine that its image lacks or holds at other versions,
# downloaded here (network at development time) into .whl/ (git-ignored: .gitignore), for `carry: [".whl"]`.
#
# The device tool's image ('cuda', as its KINDS.md lists it on 2026-11-17: Python 3.12, torch 2.11, transformers 5.17,
# huggingface_hub 1.33, accelerate 1.15, peft of no stated version, no deepspeed / optuna / bitsandbytes) then runs the
# worker with the libraries at requirements-lock.txt's versions, which the planner's readings were taken with:
#   transformers   the lock's 5.25 (the image's 5.17 is eight minor releases older; not compared)
#   peft           the lock's (the image's version is not listed)
#   accelerate     the lock's (peft imports it beside huggingface_hub 2.4; the image's 1.15 was not tried with it)
#   huggingface_hub  transformers 5.25 requires >= 2.4 at import (dependency_versions_check.py); the image has 1.33
#   httpx2, httpcore2, truststore  huggingface_hub 2's HTTP client, imported with it (not in the image)
#   regex          transformers checks regex >= 2025.10.22 at import; the image lists regex without a version
# torch cannot travel (about 900 MB for CUDA 13): the check runs the image's 2.11 and records it.
# What was checked (session 15, h56): installed with --no-deps into one folder, these wheels and only the image's
# listed distributions import transformers, peft and the profiler's worker, and run a LoRA step of Llama, Qwen3 and
# Gemma 3 with checkpointing (a Python whose site holds only those distributions); every Requires-Dist of these wheels
# is in the image's list or in this set, except kernels (transformers imports it only where installed).
#
# Usage: bash benchmarks/gpu_wheels.sh [IMAGE_PACKAGES_FILE]
#   IMAGE_PACKAGES_FILE: the image's distribution names, comma- or line-separated (e.g. KINDS.md's list): the
#   Requires-Dist of every wheel is then checked against it and the set.
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES=(transformers peft accelerate huggingface_hub httpx2 httpcore2 truststore regex)
SPECS=()
for name in "${NAMES[@]}"; do
  pin=$(grep -i -E "^${name//_/[-_]}==" requirements-lock.txt || true)
  [ -n "$pin" ] || { echo "error: $name is not pinned in requirements-lock.txt" >&2; exit 2; }
  SPECS+=("$pin")
done
rm -rf .whl
# the device README's flags (cp312, manylinux x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${SPECS[@]}"
# the set installs as the device command installs it (no index, no dependencies, one folder)
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --only-binary=:all: .whl/*.whl
rm -rf "$site"
echo "wheels (bytes):"
du -b .whl/*.whl
if [ $# -ge 1 ]; then
  # every requirement whose marker holds on the device (CPython 3.12, Linux x86_64), neither listed nor carried
  python3 - "$1" .whl/*.whl <<'PY'
import re, sys, zipfile
from packaging.requirements import Requirement

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image = {norm(n.strip()) for n in re.split(r"[,\n]", open(sys.argv[1]).read()) if n.strip()}
wheels = sys.argv[2:]
carried = {norm(w.rsplit("/", 1)[-1].split("-")[0]) for w in wheels}
device = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
missing = 0
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if (req.marker is None or req.marker.evaluate(device)) and norm(req.name) not in image | carried:
                print(f"not in the image nor carried: {req} (required by {w.rsplit('/', 1)[-1]})")
                missing += 1
print(f"{missing} requirement(s) neither in the image's list nor carried")
PY
fi
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
total=$((tree + wheels))
echo "travels: tracked files $tree + wheels $wheels = $total bytes (limit $((64 * 2**20)))"
[ "$total" -le $((64 * 2**20)) ] || { echo "error: over the device tool's 64 MiB" >&2; exit 1; }
