"""Issue 20 on CPU: precision, gradient checkpointing, attention and QLoRA planning, the 4-bit
loading code, GPU telemetry and what a run's compute cost.

The GPU measurements themselves (tokens/s against a plain Trainer with bf16, QLoRA's peak
memory) need a GPU: ``benchmarks/gpu.py`` makes them there. Here the plan is checked against
described devices (an Ampere GPU, an older one, the CPU), and what runs on CPU is run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import generate_latest

from modelyard.base import create_tiny_base, load_base
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.errors import ConfigError
from modelyard.finetune._cost import priced
from modelyard.gpu import GpuReading, gpu_readings, summarize
from modelyard.registry._card import _compute
from modelyard.serving._metrics import Metrics
from modelyard.training import (
    IGNORE_INDEX,
    Device,
    SupervisedDataset,
    TrainSettings,
    _varlen,
    plan_training,
    train_model,
)

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}
CPU = Device("cpu", "x86_64", 0, True)
AMPERE = Device("cuda", "NVIDIA A100", 1, True)
TURING = Device("cuda", "Tesla T4", 1, False)


@pytest.fixture(scope="module")
def quick_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = domain_corpus(DOMAINS, 300, seed=0)
    return create_tiny_base(corpus, tmp_path_factory.mktemp("gpu") / "base", **QUICK_BASE).path


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return synthetic_domain("it-support", 12, seed=0)


def _sha(directory: Path) -> str:
    return hashlib.sha256((directory / "adapter_model.safetensors").read_bytes()).hexdigest()


# --- the plan ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "method", "precision", "load_dtype"),
    [
        (CPU, "lora", "fp32", torch.float32),
        (CPU, "full", "fp32", torch.float32),
        (AMPERE, "lora", "bf16", torch.bfloat16),  # the frozen base in bf16, adapter fp32
        (AMPERE, "full", "bf16", torch.float32),  # fp32 master weights under bf16 autocast
        (TURING, "lora", "fp16", torch.float16),  # no bf16: fp16 with a loss scaler
    ],
)
def test_auto_precision_follows_the_device(
    device: Device, method: str, precision: str, load_dtype: torch.dtype
) -> None:
    plan = plan_training(TrainSettings(method=method), device)  # type: ignore[arg-type]
    assert (plan.precision, plan.load_dtype) == (precision, load_dtype)
    args = plan.trainer_args(gradient_checkpointing=False)
    assert (args["bf16"], args["fp16"]) == (precision == "bf16", precision == "fp16")
    assert args["use_cpu"] is (device.kind == "cpu")


@pytest.mark.parametrize(
    ("settings", "device", "expected"),
    [
        ({"precision": "fp16"}, CPU, "'fp16' needs a CUDA GPU"),
        ({"precision": "bf16"}, TURING, "'bf16' is not supported by this GPU \\(Tesla T4\\)"),
        ({"method": "qlora"}, CPU, "'qlora' needs a CUDA GPU.*trains on CUDA only"),
        ({"attention": "flash_attention_2"}, CPU, "'flash_attention_2' needs a CUDA GPU"),
    ],
)
def test_what_this_machine_cannot_run_is_refused_with_the_reason(
    settings: dict[str, Any], device: Device, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        plan_training(TrainSettings(**settings), device)
    assert caught.value.hint


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn here")
def test_flash_attention_without_the_package_is_refused_on_a_gpu_too() -> None:
    with pytest.raises(ConfigError, match="needs the flash-attn package"):
        plan_training(TrainSettings(attention="flash_attention_2"), AMPERE)


def test_several_processes_shard_full_fine_tuning_with_fsdp_and_lora_with_ddp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    lora = plan_training(TrainSettings(gradient_checkpointing=True), AMPERE)
    assert lora.distributed == "ddp"
    args = lora.trainer_args(gradient_checkpointing=True)
    assert args["activation_checkpointing"] is True
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args["ddp_find_unused_parameters"] is False and "fsdp" not in args
    full = plan_training(TrainSettings(method="full"), AMPERE)
    args = full.trainer_args(gradient_checkpointing=True)
    assert full.distributed == "fsdp" and args["fsdp"] is True
    assert args["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert args["fsdp_config"]["activation_checkpointing"] is True  # FSDP's own, not both
    assert "activation_checkpointing" not in args
    assert plan_training(TrainSettings(method="full", distributed="ddp"), AMPERE).distributed == (
        "ddp"
    )
    one = plan_training(TrainSettings(method="full"), AMPERE)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert plan_training(TrainSettings(method="full"), AMPERE).distributed is None
    assert one.record(3600.0, False)["gpu_hours"] == 4.0  # 4 processes, one GPU each


def test_the_plan_is_recorded_with_gpu_hours_only_where_a_gpu_ran() -> None:
    cpu = plan_training(TrainSettings(), CPU).record(7.5, gradient_checkpointing=True)
    assert cpu["device"] == "cpu" and cpu["precision"] == "fp32"
    assert cpu["gpus"] == 0 and cpu["gpu_hours"] is None and cpu["peak_memory_bytes"] is None
    assert cpu["gradient_checkpointing"] is True and cpu["base_dtype"] == "float32"
    gpu = plan_training(TrainSettings(), AMPERE).record(1800.0, gradient_checkpointing=False)
    assert gpu["gpu_hours"] == 0.5 and gpu["precision"] == "bf16"


@pytest.mark.parametrize("packing", [False, True])
def test_gpu_half_precision_batches_pad_to_a_multiple_of_8_and_cpu_batches_do_not(
    quick_base: Path, rows: Any, packing: bool
) -> None:
    """Tensor cores take shapes in multiples of 8 whole; the padding is masked from the loss."""
    from modelyard.training._train import _collator

    _, tokenizer = load_base(quick_base)
    features = SupervisedDataset(tokenizer, rows[:3], 512).features
    longest = max(len(f["input_ids"]) for f in features)
    assert longest % 8, "pick rows whose longest is not already a multiple of 8"
    batches = {}
    for name, device in (("cpu", CPU), ("ampere", AMPERE), ("turing", TURING)):
        plan = plan_training(TrainSettings(), device)
        batches[name] = _collator(tokenizer, packing, plan)(features)
    assert batches["cpu"]["input_ids"].shape[1] == longest
    for name in ("ampere", "turing"):
        batch = batches[name]
        assert batch["input_ids"].shape[1] == -(-longest // 8) * 8
        assert torch.equal(batch["input_ids"][:, :longest], batches["cpu"]["input_ids"])
        assert torch.equal(batch["labels"][:, :longest], batches["cpu"]["labels"])
        assert bool((batch["labels"][:, longest:] == IGNORE_INDEX).all())
    assert plan_training(TrainSettings(precision="fp32"), AMPERE).pad_multiple is None


@pytest.mark.parametrize(
    ("device", "settings", "attention"),
    [
        (AMPERE, {"packing": True}, "varlen"),  # each example's own triangle
        (TURING, {"packing": True}, "varlen"),  # fp16 runs the kernel too
        (AMPERE, {}, "sdpa"),  # padded rows: sdpa with its padding mask
        (CPU, {"packing": True}, "sdpa"),  # no such kernel on CPU: the block mask
        (AMPERE, {"packing": True, "precision": "fp32"}, "sdpa"),  # the kernel is half only
        (AMPERE, {"packing": True, "attention": "eager"}, "eager"),  # asked for, kept
    ],
)
def test_packed_rows_on_a_gpu_in_half_precision_take_the_variable_length_path(
    device: Device, settings: dict[str, Any], attention: str
) -> None:
    plan = plan_training(TrainSettings(**settings), device)
    assert plan.attention == attention
    assert plan.record(1.0, False)["attention"] == attention


def test_examples_start_where_positions_restart_and_at_every_row() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    cu_seq, longest = _varlen.segments(positions)
    assert cu_seq.tolist() == [0, 3, 5, 6, 10, 12] and cu_seq.dtype == torch.int32
    assert longest == 4


def _reference_varlen(
    q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, **options: Any
) -> torch.Tensor:
    """What the CUDA kernel computes, one example at a time with sdpa (for CPU tests)."""
    scale, enable_gqa = options.pop("scale"), options.pop("enable_gqa")
    assert options == {"window_size": (-1, 0)}  # causal
    assert torch.equal(cu_q, cu_k) and max_q == max_k
    assert q.shape[0] == int(cu_q[-1]) and max_q == int((cu_q[1:] - cu_q[:-1]).max())
    parts = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        heads = [t[start:end].transpose(0, 1) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(
            *heads, is_causal=True, scale=scale, enable_gqa=enable_gqa
        )
        parts.append(out.transpose(0, 1))
    return torch.cat(parts)


def test_the_variable_length_path_trains_to_the_block_masks_loss(
    quick_base: Path, rows: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything but the CUDA kernel itself, checked on CPU: the kernel is replaced by a
    per-example sdpa, and packed training gives the loss of the block-mask path."""
    from dataclasses import replace

    from modelyard.training._dataset import ALPACA
    from modelyard.training._load import load_for_training
    from modelyard.training._train import _lora_model, _make_trainer

    calls = []

    def kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(args[3].tolist())
        return _reference_varlen(*args, **kwargs)

    monkeypatch.setattr(_varlen, "kernel", kernel)
    found: list[int] = []  # the segments are found once a batch, not once a layer
    segments = _varlen.segments

    def counted(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        found.append(1)
        return segments(position_ids)

    monkeypatch.setattr(_varlen, "segments", counted)
    settings = TrainSettings(max_steps=2, batch_size=2, packing=True, max_seq_len=256)
    losses = {}
    for attention in ("sdpa", "varlen"):
        plan = replace(plan_training(settings, CPU), attention=attention)
        model, tokenizer = load_for_training(quick_base, plan)
        assert model.config._attn_implementation == attention
        model.config.use_cache = False
        model = _lora_model(model, settings)
        data = SupervisedDataset(tokenizer, rows, settings.max_seq_len, ALPACA)
        trainer = _make_trainer(
            model, tokenizer, settings, plan, str(tmp_path / attention), (data, None), []
        )
        losses[attention] = trainer.train().training_loss
    assert calls and all(len(cu) > 3 for cu in calls)  # several examples a packed batch
    assert 0 < len(found) * 2 <= len(calls)  # two layers: at most one finding a forward
    assert losses["varlen"] == pytest.approx(losses["sdpa"], rel=1e-4)


# --- training on CPU -------------------------------------------------------------------


def test_auto_trains_in_fp32_on_cpu_byte_for_byte(
    quick_base: Path, rows: Any, tmp_path: Path
) -> None:
    settings = TrainSettings(max_steps=2, batch_size=4)
    auto = train_model(quick_base, rows, tmp_path / "a", settings)
    again = train_model(quick_base, rows, tmp_path / "b", settings)
    fp32 = train_model(
        quick_base, rows, tmp_path / "c", settings.model_copy(update={"precision": "fp32"})
    )
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b") == _sha(tmp_path / "c")
    assert auto.compute["precision"] == "fp32" and auto.compute["device"] == "cpu"
    assert auto.compute["gpu_hours"] is None and auto.compute["attention"] == "sdpa"
    assert again.train_loss == auto.train_loss == fp32.train_loss


def test_bf16_works_on_cpu_with_the_adapter_kept_in_fp32(
    quick_base: Path, rows: Any, tmp_path: Path
) -> None:
    from safetensors import safe_open

    settings = TrainSettings(max_steps=2, batch_size=4, precision="bf16")
    result = train_model(quick_base, rows, tmp_path / "bf16", settings)
    assert result.compute["precision"] == "bf16" and result.compute["base_dtype"] == "bfloat16"
    assert torch.isfinite(torch.tensor(result.train_loss))
    with safe_open(str(tmp_path / "bf16" / "adapter_model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {torch.float32}  # peft keeps LoRA weights in fp32


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_loss(
    quick_base: Path, rows: Any, tmp_path: Path, method: str
) -> None:
    settings = TrainSettings(method=method, max_steps=3, batch_size=4)  # type: ignore[arg-type]
    plain = train_model(quick_base, rows, tmp_path / "plain", settings)
    checkpointed = train_model(
        quick_base,
        rows,
        tmp_path / "ckpt",
        settings.model_copy(update={"gradient_checkpointing": True}),
    )
    assert checkpointed.compute["gradient_checkpointing"] is True
    plain_losses = [e["loss"] for e in plain.history if "loss" in e]
    ckpt_losses = [e["loss"] for e in checkpointed.history if "loss" in e]
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)


def test_eager_attention_trains_to_the_same_loss_as_sdpa(
    quick_base: Path, rows: Any, tmp_path: Path
) -> None:
    settings = TrainSettings(max_steps=2, batch_size=4)
    sdpa = train_model(quick_base, rows, tmp_path / "sdpa", settings)
    eager = train_model(
        quick_base, rows, tmp_path / "eager", settings.model_copy(update={"attention": "eager"})
    )
    assert eager.compute["attention"] == "eager"
    assert eager.train_loss == pytest.approx(sdpa.train_loss, rel=1e-4)


def test_the_qlora_loading_code_builds_a_4bit_nf4_base_that_trains_and_exports_like_lora(
    quick_base: Path, rows: Any, tmp_path: Path
) -> None:
    """The real QLoRA path past the CUDA refusal: bitsandbytes quantizes on CPU too, so
    the loading, freezing, LoRA, Trainer and adapter export are all exercised."""
    if importlib.util.find_spec("bitsandbytes") is None:
        if os.environ.get("CI") == "true":  # .ci/run installs it (make gpu-extra)
            pytest.fail("bitsandbytes is missing in CI: run make gpu-extra")
        pytest.skip("bitsandbytes is the optional extra gpu (make gpu-extra)")
    from dataclasses import replace

    from modelyard.base import load_adapter
    from modelyard.training._dataset import ALPACA, SupervisedDataset
    from modelyard.training._load import load_for_training
    from modelyard.training._train import _lora_model, _make_trainer, _save_adapter

    settings = TrainSettings(method="qlora", max_steps=2, batch_size=4, precision="bf16")
    plan = replace(plan_training(TrainSettings(precision="bf16"), CPU), quantized=True)
    model, tokenizer = load_for_training(quick_base, plan)
    assert model.is_loaded_in_4bit
    quant = model.config.quantization_config
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    proj = model.model.layers[0].self_attn.q_proj
    assert type(proj).__name__ == "Linear4bit"
    assert all(not p.requires_grad for p in model.parameters())  # the base is frozen
    # what stays unquantized stays in the compute dtype (no fp32 copy of embedding and head)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    model.config.use_cache = False
    tokenizer.padding_side = "right"
    model = _lora_model(model, settings)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}
    data = SupervisedDataset(tokenizer, rows, settings.max_seq_len, ALPACA)
    trainer = _make_trainer(model, tokenizer, settings, plan, str(tmp_path / "w"), (data, None), [])
    output = trainer.train()
    assert torch.isfinite(torch.tensor(output.training_loss))
    _save_adapter(trainer.model, tmp_path / "adapter")
    base, _ = load_base(quick_base)  # served like any adapter: on the unquantized base
    tuned = load_adapter(base, tmp_path / "adapter")
    with torch.no_grad():
        logits = tuned(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


# --- GPU telemetry ---------------------------------------------------------------------

READINGS = [
    GpuReading(0, "NVIDIA H100 80GB HBM3", 12 * 1024**3, 80 * 1024**3, 0.97),
    GpuReading(1, "NVIDIA H100 80GB HBM3", 1024**3, 80 * 1024**3, 0.0),
]


def test_no_gpu_here_means_no_readings_and_no_gpu_series() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_readings() == []
    assert summarize([]) == ""
    text = generate_latest(Metrics().registry).decode()
    assert "modelyard_gpu_" not in text


def test_gpu_series_per_device_where_there_are_gpus() -> None:
    text = generate_latest(Metrics(gpus=lambda: READINGS).registry).decode()
    assert (
        'modelyard_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100 80GB HBM3"} 1.2884901888e+10'
        in text
    )
    assert 'modelyard_gpu_utilization_ratio{gpu="0",name="NVIDIA H100 80GB HBM3"} 0.97' in text
    assert 'modelyard_gpu_memory_total_bytes{gpu="1"' in text
    assert summarize(READINGS[:1]) == "GPU0 12.0/80.0 GiB 97%"


def test_a_gpu_without_utilization_keeps_its_memory_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a MIG instance NVML reports memory but refuses utilization (NOT_SUPPORTED): the
    memory series stay, the utilization series is left out (it was all or nothing)."""
    from types import SimpleNamespace

    import modelyard.gpu._nvml as nvml_module

    class NVMLError(Exception):
        pass

    def no_utilization(_: object) -> None:
        raise NVMLError("Not Supported")

    fake = SimpleNamespace(
        NVMLError=NVMLError,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda _: SimpleNamespace(used=5 * 1024**3, total=10 * 1024**3),
        nvmlDeviceGetUtilizationRates=no_utilization,
        nvmlDeviceGetName=lambda _: b"NVIDIA A100 MIG 1g.10gb",
    )
    monkeypatch.setattr(nvml_module._NVML, "module", lambda: fake)
    (reading,) = gpu_readings()
    assert reading.memory_used_bytes == 5 * 1024**3 and reading.utilization is None
    assert summarize([reading]) == "GPU0 5.0/10.0 GiB"
    text = generate_latest(Metrics(gpus=gpu_readings).registry).decode()
    assert 'modelyard_gpu_memory_used_bytes{gpu="0",name="NVIDIA A100 MIG 1g.10gb"}' in text
    assert "modelyard_gpu_utilization_ratio{" not in text


def test_gpu_series_pass_promtool(tmp_path: Path) -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (tests/test_metrics_promtool.py runs it in CI)")
    text = generate_latest(Metrics(gpus=lambda: READINGS).registry).decode()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- cost -------------------------------------------------------------------------------


def test_cost_is_gpu_hours_at_the_price_and_none_on_cpu() -> None:
    cpu = plan_training(TrainSettings(), CPU).record(60.0, False)
    assert priced(cpu, 2.5)["cost"] is None and priced(cpu, 2.5)["gpu_hour_price"] is None
    gpu = plan_training(TrainSettings(), AMPERE).record(7200.0, False)
    assert priced(gpu, 2.5)["cost"] == 5.0
    assert priced(gpu, None)["cost"] is None and priced(gpu, None)["gpu_hours"] == 2.0


def test_the_card_says_what_training_cost() -> None:
    cpu = _compute(priced(plan_training(TrainSettings(), CPU).record(60.0, False), 2.5))
    assert "none: trained on CPU, no GPU was held" in cpu and "no GPU cost" in cpu
    gpu_record = {**plan_training(TrainSettings(), AMPERE).record(7200.0, False)}
    gpu_record["peak_memory_bytes"] = 8 * 1024**3
    priced_card = _compute(priced(gpu_record, 2.5))
    assert "| GPU-hours | 2.0000 |" in priced_card
    assert "5 (2.0000 GPU-hours at 2.5 per GPU-hour)" in priced_card
    assert "| precision | bf16 |" in priced_card and "8.00 GiB" in priced_card
    assert "not priced: no MODELYARD_GPU_HOUR_PRICE" in _compute(priced(gpu_record, None))
    assert "not recorded" in _compute(None)
