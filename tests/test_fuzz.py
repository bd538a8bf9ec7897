"""Property-based fuzzing of every input surface (issue 26): CLI options, config.json, plan.json and request bodies.

The contract, for any input: either exit code 2 with exactly one line on stderr and nothing on stdout (HTTP:
422/413/415 with a one-line detail), or a valid answer whose fit verdict agrees with its own numbers. Never a
traceback, a hang, a 500 or a NaN.

The default run draws FTPLAN_FUZZ_EXAMPLES (default 100) inputs per surface from a fixed seed, so the suite
stays quick and repeatable; `FTPLAN_FUZZ_EXAMPLES=1000 python -m pytest tests/test_fuzz.py` draws 1,000 per
surface from a fresh seed each run (the issue's bar).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (the dev extra)")
from cli_helpers import run  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from planner.input_files import JSONInputError, parse_json  # noqa: E402

EXAMPLES = int(os.environ.get("FTPLAN_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
GiB = 2**30

TINY = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 2048}
CONFIGS = {
    "llama": TINY,
    "mixtral": {**TINY, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {**TINY, "model_type": "qwen2", "num_key_value_heads": 2, "tie_word_embeddings": True},
    "bloom": {"model_type": "bloom", "vocab_size": 32000, "hidden_size": 512, "n_layer": 4, "n_head": 8},
    "chatglm": {"model_type": "chatglm", "padded_vocab_size": 32000, "hidden_size": 512, "ffn_hidden_size": 1376,
                "num_layers": 4, "num_attention_heads": 8, "multi_query_attention": True,
                "multi_query_group_num": 2, "seq_length": 2048},
}


# ---------------------------------------------------------------- the contract

def strict_json(text: str | bytes) -> Any:
    try:
        return parse_json(text, what="the answer")
    except JSONInputError as exc:  # NaN, Infinity or broken JSON in an answer: a bug
        pytest.fail(f"an answer is not strict JSON: {exc}")


def all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True


def check_entry(e: dict[str, Any], *, headroom: float = 0.0, host_gib: float | None = None,
                nvme_gib: float = 2048.0) -> None:
    """One estimate (an /api/estimate answer or a plan entry): its fit verdict agrees with its numbers."""
    assert all_finite(e)
    mem = e["memory_per_gpu_bytes"]
    assert all(v >= 0 for v in mem.values()), mem
    assert abs(sum(v for k, v in mem.items() if k != "total") - mem["total"]) <= 8, mem
    assert e["params_total"] > 0 and e["params_trainable"] >= 0
    if e["config"]["method"] == "full":  # LoRA's adapters may outnumber a tiny base (hidden size 1: r x out each)
        assert e["params_trainable"] <= e["params_total"]
    assert e["fits"] == (not e["fit_reasons"])
    total, gpu = mem["total"], e["gpu_memory_bytes"]
    usable = gpu * (1 - headroom)
    reasons = " ".join(e["fit_reasons"])
    if abs(total - usable) > 1:
        assert (total > usable) == ("per GPU" in reasons), (total, usable, reasons)
    cluster = e["config"]["cluster"]
    host_limit = host_gib * GiB if host_gib is not None else 2.0 * gpu * cluster["gpus_per_node"]
    if abs(e["host_memory_bytes_per_node"] - host_limit) > 1:
        assert (e["host_memory_bytes_per_node"] > host_limit) == ("of host memory" in reasons), reasons
    if abs(e["nvme_bytes_per_node"] - nvme_gib * GiB) > 1:
        assert (e["nvme_bytes_per_node"] > nvme_gib * GiB) == ("of NVMe" in reasons), reasons
    assert e["tight"] == (e["fits"] and total > 0.9 * gpu)
    if "step_time_s" in e:
        c = e["config"]
        dp = cluster["nodes"] * cluster["gpus_per_node"] // (c["tp"] * c["pp"])
        tokens = c["micro_batch"] * c["grad_accum"] * dp * c["seq_len"]
        assert e["step_time_s"] > 0 and e["mfu"] >= 0
        assert math.isclose(e["tokens_per_s"], tokens / e["step_time_s"], rel_tol=1e-9)


def check_answer(command: str, data: dict[str, Any], options: dict[str, Any]) -> None:
    limits = {"headroom": float(options.get("headroom") or 0.0),
              "host_gib": float(options["host_memory"]) if options.get("host_memory") is not None else None,
              "nvme_gib": float(options["nvme"]) if options.get("nvme") is not None else 2048.0}
    assert all_finite(data)
    if command == "estimate":
        check_entry(data, **limits)
    elif command == "plan":
        assert data["candidates_evaluated"] >= data["valid"] >= data["fitting"] >= len(data["plans"])
        for entry in data["plans"]:
            assert entry["fits"]
            check_entry(entry, **limits)
    elif command == "scale":
        gpus = [row["gpus"] for row in data["rows"]]
        assert gpus == sorted(set(gpus))
        for row in data["rows"]:
            assert row["fitting"] <= row["candidates_evaluated"]
            if row["fits"]:
                assert row["memory_per_gpu_bytes"] > 0 and row["step_time_s"] > 0 and row["speedup"] > 0


def one_line_refusal(code: int, out: str, err: str) -> None:
    assert code == 2 and out == "", (code, out[-500:], err[-2000:])
    assert err.startswith("ftplan: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# ---------------------------------------------------------------- values a user or an attacker types

NASTY_TEXT = ["", " ", "0", "-1", "1e3", "1.5", "nan", "NaN", "inf", "-inf", "1e400", "9" * 5000, "0x10", "true",
              "\n", "a\nb", "../../etc/passwd", "/dev/zero", "/etc/passwd", "$(touch pwned)", "`id`", "é", "\x00",
              "linear:2", "linear:1e308", "8xA800", "2x8xH100", "A800", "lora", "full", "qlora", "3", "8192", "all"]
option_text = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.integers(-10, 100).map(str),
    st.integers(-2**80, 2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10, 5000), st.integers(-2**80, 2**80),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                        st.sampled_from(NASTY_TEXT))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=8), inner,
                                                                               max_size=3)), max_leaves=6)


@functools.cache
def click_options(command: str) -> tuple[list[str], list[str]]:
    """(options that take a value, flags) of a command, without those that write files or change output."""
    from ftplan import serve_work

    cmd = serve_work.commands()[command]
    takes, flags = [], []
    for p in cmd.params:
        if p.name in ("json_out", "emit_dir", "force", "pick", "out"):
            continue
        long = [o for o in p.opts if o.startswith("--")]
        if not long:
            continue
        (flags if getattr(p, "is_flag", False) else takes).extend(long)
        flags.extend(o for o in p.secondary_opts if o.startswith("--"))
    return takes, flags


CHOICES: dict[str, list[str]] = {}


def choice_values() -> list[str]:
    from planner import choices

    if not CHOICES:
        CHOICES["all"] = sorted({str(e.value) for name in dir(choices) for cls in [getattr(choices, name)]
                                 if isinstance(cls, type) and hasattr(cls, "__members__") for e in cls})
    return CHOICES["all"]


# ---------------------------------------------------------------- surface 1: CLI options

for _command in ("estimate", "plan", "scale"):  # built before any strategy runs (typer's parser set-up)
    click_options(_command)
choice_values()


@st.composite
def cli_case(draw) -> tuple[str, list[str], dict[str, Any]]:
    command = draw(st.sampled_from(["estimate", "estimate", "estimate", "plan", "scale"]))
    takes, flags = click_options(command)
    base: dict[str, str] = {"--model": draw(st.sampled_from(["7b", "llama-3-8b", "mixtral-8x7b", "qwen2.5-7b",
                                                             "bloom-7b1", "chatglm3-6b", "baichuan2-7b"]))}
    if command == "scale":
        base |= {"--gpu": draw(st.sampled_from(["A800", "H100", "RTX4090", "CPU"])),
                 "--max-gpus": str(draw(st.integers(1, 16)))}
    else:
        base["--gpus"] = draw(st.sampled_from(["1xA800", "2xA800", "8xA800", "2x8xH100", "4xRTX4090", "2xCPU"]))
    if command == "plan":
        base["--method"] = draw(st.sampled_from(["lora", "full", "qlora"]))
    extra: list[str] = []
    values = st.one_of(option_text, st.sampled_from(choice_values()))
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()) and flags:
            extra.append(draw(st.sampled_from(flags)))
        else:
            option = draw(st.sampled_from(takes))
            base.pop(option, None)
            extra += [option, draw(values)]
    args = [x for kv in base.items() for x in kv] + extra
    options: dict[str, Any] = {}
    for name in ("headroom", "host-memory", "nvme"):
        if f"--{name}" in args:
            options[name.replace("-", "_")] = args[len(args) - 1 - args[::-1].index(f"--{name}") + 1]
    return command, args, options


@FUZZ
@given(case=cli_case())
def test_fuzz_cli_options(case, capsys, monkeypatch, tmp_path_factory) -> None:
    command, args, options = case
    out_args = ["--out", str(tmp_path_factory.mktemp("scale"))] if command == "scale" else []
    code, out, err = run(capsys, monkeypatch, command, *args, *out_args, "--json")
    event(f"{command}: {'answered' if code == 0 else 'refused'}")
    if code != 0:
        one_line_refusal(code, out, err)
        return
    check_answer(command, strict_json(out), options)


# ---------------------------------------------------------------- surface 2: config.json

@st.composite
def config_text(draw, damaged: bool = True) -> str:
    cfg = dict(CONFIGS[draw(st.sampled_from(sorted(CONFIGS)))])
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "set", "small", "drop", "add"]))
        if action == "drop" and cfg:
            cfg.pop(draw(st.sampled_from(sorted(cfg))))
        elif action == "add":
            cfg[draw(st.sampled_from(["head_dim", "num_key_value_heads", "tie_word_embeddings", "attention_bias",
                                      "num_local_experts", "num_experts_per_tok", "rope_scaling", "zzz"]))] = \
                draw(json_value)
        elif cfg:
            key = draw(st.sampled_from(sorted(cfg)))
            cfg[key] = draw(st.integers(1, 4096)) if action == "small" else draw(json_value)
    text = json.dumps(cfg)  # NaN and Infinity are written as such: the reader must refuse them
    if damaged and draw(st.integers(0, 9)) == 0:  # a damaged file now and then
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "}", "]", ",", "\x00", "9" * 5000, "[" * 5000]))
    return text


@FUZZ
@given(text=config_text(), command=st.sampled_from(["estimate", "estimate", "plan"]))
def test_fuzz_config_json(text: str, command: str, capsys, monkeypatch, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_text(text)
    args = ["--method", "lora"] if command == "plan" else []
    code, out, err = run(capsys, monkeypatch, command, "--model", str(folder), "--gpus", "2xA800", *args, "--json")
    event(f"{command}: {'answered' if code == 0 else 'refused'}")
    if code != 0:
        one_line_refusal(code, out, err)
        return
    check_answer(command, strict_json(out), {})


# ---------------------------------------------------------------- surface 3: plan.json

PLANS: dict[str, dict[str, Any]] = {}


def base_plans() -> dict[str, dict[str, Any]]:
    """A few real plan.json files (ZeRO-2 with RoPE scaling, FSDP, QLoRA, TP x PP over two nodes, MoE, GRPO)."""
    if PLANS:
        return PLANS
    from planner.build import build_config
    from planner.estimate import estimate
    from runner.emit import plan_dict

    for name, kw in {"zero2": {"model": "7b", "gpus": "8xA800", "zero": 2, "seq_len": 4096,
                               "rope_scaling": "linear:2"},
                     "fsdp": {"model": "llama-3-8b", "gpus": "4xA800", "fsdp": "full_shard", "method": "full",
                              "transformers_version": "4.46.1", "fused_adamw": True, "keeps_output": True},
                     "qlora": {"model": "7b", "gpus": "1xRTX4090", "method": "qlora", "grad_ckpt": "full"},
                     "tp-pp": {"model": "13b", "gpus": "2x8xH100", "tp": 2, "pp": 2, "zero": 1, "method": "full"},
                     "moe": {"model": "mixtral-8x7b", "gpus": "8xH100", "zero": 3, "method": "lora"},
                     "grpo": {"model": "llama-3.2-1b", "gpus": "8xH100", "stage": "grpo", "zero": 2,
                              "reward_model": "llama-3.2-1b"}}.items():
        from planner.strategy import FsdpStrategy, GradCkpt, Method, Stage

        kw = dict(kw)
        for key, cls in (("fsdp", FsdpStrategy), ("grad_ckpt", GradCkpt), ("method", Method), ("stage", Stage)):
            if key in kw:
                kw[key] = cls(kw[key])
        PLANS[name] = json.loads(json.dumps(plan_dict(estimate(build_config(**kw)))))
    return PLANS


@st.composite
def plan_text(draw) -> str:
    plan = json.loads(json.dumps(base_plans()[draw(st.sampled_from(sorted(base_plans())))]))
    for _ in range(draw(st.integers(1, 3))):
        config = plan.get("config")
        targets = {"top": plan, **({"config": config} if isinstance(config, dict) else {})}
        for part in ("model", "cluster"):
            if isinstance(config, dict) and isinstance(config.get(part), dict) and config[part]:
                targets[part] = config[part]
        target = targets[draw(st.sampled_from(sorted(targets)))]
        if not target:
            continue
        key = draw(st.sampled_from(sorted(target)))
        action = draw(st.sampled_from(["set", "small", "drop", "neighbour"]))
        if action == "drop":
            target.pop(key)
        elif action == "small":
            target[key] = draw(st.integers(-2, 70))
        elif action == "neighbour" and isinstance(target[key], int) and not isinstance(target[key], bool):
            target[key] = target[key] + draw(st.integers(-3, 3))
        else:
            target[key] = draw(json_value)
    return json.dumps(plan)


@FUZZ
@given(text=plan_text())
def test_fuzz_plan_json(text: str, capsys, monkeypatch, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("plan")
    (folder / "plan.json").write_text(text)
    out_dir = folder / "out"
    code, out, err = run(capsys, monkeypatch, "emit", str(folder / "plan.json"), str(out_dir))
    event("emitted" if code == 0 else "refused")
    if code != 0:
        one_line_refusal(code, out, err)
        assert not out_dir.exists()
        return
    written = strict_json((out_dir / "plan.json").read_text())
    check_entry(written)
    launch = (out_dir / "launch.sh").read_text().splitlines()
    name = written["config"]["model"]["name"]
    assert all(line.startswith("#") for line in launch if name in line)  # the name only ever in comments
    lf = yaml.safe_load((out_dir / "llamafactory.yaml").read_text())
    assert lf["output_dir"].startswith("saves/") and ".." not in Path(lf["output_dir"]).parts


# ---------------------------------------------------------------- surface 4: request bodies

@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi", reason="ftplan serve needs the serve extra")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    from fastapi.testclient import TestClient

    from ftplan.serve import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(workers=2, timeout_s=300))) as c:
        yield c


@functools.cache
def request_fields(endpoint: str) -> list[str]:
    from ftplan import serve_work

    cmd = serve_work.commands()["plan" if endpoint == "emit" else endpoint]
    return sorted({p.name for p in cmd.params} - serve_work.CLI_ONLY)


@st.composite
def request_case(draw) -> tuple[str, bytes, dict[str, Any]]:
    endpoint = draw(st.sampled_from(["estimate", "estimate", "estimate", "plan", "scale", "emit"]))
    body: dict[str, Any] = {}
    if draw(st.integers(0, 4)) == 0:
        body["model_config"] = json.loads(draw(config_text(damaged=False))) if draw(st.booleans()) \
            else draw(json_value)
    else:
        body["model"] = draw(st.sampled_from(["7b", "llama-3-8b", "mixtral-8x7b", "qwen2.5-7b", "bloom-7b1"]))
    if endpoint == "scale":
        body |= {"gpu": draw(st.sampled_from(["A800", "H100", "RTX4090"])), "max_gpus": draw(st.integers(1, 16))}
    else:
        body["gpus"] = draw(st.sampled_from(["1xA800", "2xA800", "8xA800", "4xRTX4090", "2x8xH100"]))
    if endpoint in ("plan", "emit"):
        body["method"] = [draw(st.sampled_from(["lora", "full", "qlora"]))]
    if endpoint == "emit" and draw(st.booleans()):
        body = {"plan": json.loads(draw(plan_text()))}
        if draw(st.booleans()):
            body["emit"] = draw(st.sampled_from(["out", "../x", "/etc", "a/b", "", "x\ny"]))
    fields = request_fields(endpoint)
    values = st.one_of(json_value, st.integers(0, 64), st.sampled_from(choice_values()),
                       st.lists(st.sampled_from(choice_values()), max_size=3))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):  # untouched bodies too: answers get checked
        body[draw(st.one_of(st.sampled_from(fields), st.sampled_from(fields), st.text(max_size=8)))] = draw(values)
    raw = json.dumps(body).encode()
    if draw(st.integers(0, 14)) == 0:  # damaged bytes now and then
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.sampled_from([b"", b"\xff", b"}", b"NaN", b"1e999", b"[" * 3000]))
    return endpoint, raw, body


@FUZZ
@given(case=request_case())
def test_fuzz_request_bodies(case, client) -> None:
    endpoint, raw, body = case
    response = client.post(f"/api/{endpoint}", content=raw, headers={"Content-Type": "application/json"})
    event(f"{endpoint}: {response.status_code}")
    assert response.status_code in (200, 413, 422), (response.status_code, response.text[:500])
    if response.status_code != 200:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
        return
    if endpoint == "emit":
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            plans = [n for n in zf.namelist() if n.endswith("/plan.json")]
            assert len(plans) == 1
            check_entry(strict_json(zf.read(plans[0])))
        return
    options = {k.replace("-", "_"): v for k, v in body.items()} if isinstance(body, dict) else {}
    check_answer(endpoint, strict_json(response.content), options)
