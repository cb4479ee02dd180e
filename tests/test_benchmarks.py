"""The benchmarks run: a smoke test of each script's --quick mode (numbers, not targets)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_train_throughput_quick_reports_every_ratio() -> None:
    script = ROOT / "benchmarks" / "train_throughput.py"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # stdout is the JSON alone; the tables go to stderr
    for section in ("platform_vs_plain", "packing", "memory"):
        assert _positive(result[section]["ratio"]), (section, result[section])
    assert 0 < result["packing"]["padding_fraction"] < 1
    assert {r["variant"] for r in result["runs"]} == {"modelyard", "plain", "modelyard packed"}
    # modelyard and the plain script trained on the same padded batches in the same order, so
    # their losses agree (packed runs take fewer, fuller steps: another loss, by design).
    padded = [r["train_loss"] for r in result["runs"] if r["variant"] != "modelyard packed"]
    assert len(padded) >= 2
    assert all(math.isclose(padded[0], loss, rel_tol=1e-3) for loss in padded), result["runs"]
    memory = result["memory"]
    assert _positive(memory["lora"]["peak_rss_mib"])
    assert memory["full"]["trainable_parameters"] == memory["full"]["total_parameters"]
    assert 0 < memory["lora"]["trainable_parameters"] < memory["full"]["trainable_parameters"]
    assert "Training throughput" in r.stderr
    assert "modelyard vs plain Trainer + peft" in r.stderr


@pytest.mark.slow
def test_serving_quick_reports_every_ratio() -> None:
    script = ROOT / "benchmarks" / "serving.py"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", "--preload", "2000"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # stdout is the JSON alone; the tables go to stderr
    for section in ("server_vs_generate", "batching", "adapters", "records"):
        assert _positive(result[section]["ratio"]), (section, result[section])
        assert isinstance(result[section]["met"], bool)
    records = result["records"]  # on vs off round by round, the target in every round
    config = result["config"]
    assert len(records["rounds"]) == config["repeats"]
    assert all(_positive(r) for r in records["rounds"])
    assert records["met_every_round"] == (min(records["rounds"]) >= records["target"])
    assert [len(pairs) for pairs in records["pairs"]] == [config["records_pairs"]] * len(
        records["rounds"]
    )
    assert records["control"] is False
    # records loads ran side by side: each pair one process on, the other off, then swapped
    sides = {(x["round"], x["pair"], x["process"]): x["records"] for x in result["records_loads"]}
    assert (
        len(sides)
        == len(result["records_loads"])
        == 2 * config["repeats"] * config["records_pairs"]
    )
    for (round_, pair, process), side in sides.items():
        assert {side, sides[(round_, pair, 1 - process)]} == {"on", "off"}
        assert sides[(round_, pair + (1 if pair % 2 else -1), process)] != side
    assert all(x["tokens"] > 0 for x in result["records_loads"])
    assert result["preload"]["records"] == result["config"]["preload"] == 2000
    loads = result["loads"]
    assert len({load["name"] for load in loads}) == 6  # records on and off: records_loads
    # every load generated real tokens, counted from the server's usage or generate's output
    assert all(load["tokens"] > 0 and _positive(load["tokens_per_second"]) for load in loads)
    assert result["machine"]["torch_threads"] == result["config"]["threads"]
    assert "Serving throughput" in r.stderr
    assert "torch threads: " in r.stderr


@pytest.mark.slow
def test_routing_quick_reports_both_hit_rates() -> None:
    script = ROOT / "benchmarks" / "routing.py"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]  # non-zero: a request failed
    result = json.loads(r.stdout)
    for workload in ("uniform", "zipf"):
        summary = result["summary"][workload]
        assert 0 < summary["round_robin"] < 1 and 0 < summary["routing"] <= 1, summary
    # every counted request met the cache once, hit or miss, on one of the two replicas
    assert all(run["hits"] + run["misses"] == sum(run["per_replica"]) == run["requests"]
               for run in result["runs"])  # fmt: skip
    assert "Adapter cache hit rate" in r.stderr


@pytest.mark.slow
def test_gpu_quick_runs_every_measure_on_whatever_is_here(tmp_path: Path) -> None:
    """benchmarks/gpu.py's smoke test: on CPU a tiny model, QLoRA said to need CUDA."""
    script = ROOT / "benchmarks" / "gpu.py"
    out = tmp_path / "gpu.md"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    # every row fits the row length (a row too long is cut, not dropped): once only 1 of 32 did
    assert result["rows"] == result["config"]["rows"]
    assert _positive(result["lora"]["ratio"]) and _positive(result["packing"]["ratio"])
    assert result["lora"]["runs"]["modelyard"][0]["loss"] > 0
    assert _positive(result["decode"]["single_tokens_per_second"])
    assert _positive(result["decode"]["batch8_tokens_per_second"])
    for size in ("1b", "3b"):
        qlora = result["qlora"][size]
        if importlib.util.find_spec("bitsandbytes") is not None:  # CI installs it
            assert qlora["weights_gib"]["qlora"] < qlora["weights_gib"]["lora"]
        if not result["machine"]["cuda"]:
            assert "CUDA GPU" in qlora["skipped"] and "peak_gib" not in qlora
    if not result["machine"]["cuda"]:
        assert result["lora"]["peak_gib"] == {"modelyard": None, "plain": None}
    table = out.read_text(encoding="utf-8")
    assert "| LoRA tokens/s, modelyard / plain Trainer+peft (bf16) |" in table
    assert "| QLoRA / LoRA weights, a 3 B model |" in table
    # written after every section, with the numbers beside it
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == result


SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("[a-z]*.py"))

# Runs each script named in argv with --help, one after the other in this one process (torch,
# transformers, peft and fastapi imported once, not once a script: 19 fresh interpreters took
# 80 to 140 s), as `python <script> --help` from benchmarks/ would: the script as __main__,
# benchmarks/ first on sys.path (they import each other's helpers). Prints one JSON object on
# stdout: per script, its exit code, what it printed, and the traceback of whatever it raised.
# It ends with os._exit: the interpreter's own teardown of torch's and transformers' modules
# took 2 s more (collections over their 600,000 objects), and checks nothing here.
_HELP_DRIVER = """
import contextlib, io, json, os, runpy, sys, traceback
path0, results = list(sys.path), {}
for script in sys.argv[1:]:
    print("--help of", script, file=sys.stderr, flush=True)  # the last one named, on a crash
    out, err, code, error = io.StringIO(), io.StringIO(), None, None
    sys.argv, sys.path[:] = [script, "--help"], [os.getcwd(), *path0[1:]]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        error = traceback.format_exc()
    results[script] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                       "error": error}
print(json.dumps(results), flush=True)
os._exit(0)
"""


def test_every_script_imports_and_says_how_to_run_it() -> None:
    """Scripts import each other's helpers (serving_vllm.py from serving.py): a helper moved
    without its users broke serving_vllm.py once, unseen, as it has no --quick run in CI.
    Every script's --help runs in one process (_HELP_DRIVER); a failure names its script."""
    r = subprocess.run(
        [sys.executable, "-c", _HELP_DRIVER, *SCRIPTS], cwd=ROOT / "benchmarks",
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]  # a crash: the last script it names
    results = json.loads(r.stdout)
    assert sorted(results) == SCRIPTS
    failures = [
        f"{script}: exit {x['code']!r}\n{x['error'] or x['stderr']}"
        for script, x in results.items()
        if x["error"] or x["code"] not in (0, None) or "usage:" not in x["stdout"]
    ]
    assert not failures, "\n".join(failures)
