"""A supervised vLLM server: one OpenAI-compatible vLLM process per model, in its own environment.

vLLM pins its own torch, transformers and fastapi, so modelyard never imports it:
``VLLMProcess`` runs ``python -m vllm.entrypoints.openai.api_server`` with the
interpreter of the environment ``make vllm`` builds (``VLLMOptions.python``), on
127.0.0.1 and a free port, in a session of its own (vLLM starts worker processes;
the whole group is stopped). It is ready when ``/health`` answers and one warm-up
completion succeeds (a model vLLM cannot run passes ``/health`` and fails its first
request). A supervisor thread restarts it with backoff when it dies; meanwhile
``ready()`` is false and the engine answers 503 with ``Retry-After``. ``stop``
sends SIGTERM (vLLM ends its streams and exits), then SIGKILL to the group.
Runtime LoRA updates are enabled: adapters are loaded with
``/v1/load_lora_adapter`` and unloaded with ``/v1/unload_lora_adapter``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelyard.errors import ConfigError

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what --max-lora-rank accepts
DTYPES = ("auto", "float32", "bfloat16", "float16")  # names of vLLM's --dtype that serve takes
START_TIMEOUT_S = 1200.0  # a large model (weights over the network, CUDA graphs) takes minutes
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


SERVER_KEEPALIVE_S = 75  # vLLM's idle keep-alive (see ``VLLMOptions.env``)


@dataclass(frozen=True)
class VLLMOptions:
    """How to start vLLM: its interpreter and the options users tune (passed through)."""

    python: str
    dtype: str = "auto"  # float32 on the CPU (vLLM's auto would turn fp32 weights into bf16)
    max_loras: int = 4  # adapters in one batch
    max_lora_rank: int = 64
    max_cpu_loras: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    max_num_seqs: int | None = None
    kv_cache_gb: float = 2.0  # VLLM_CPU_KVCACHE_SPACE on CPU machines (unset: most of memory)
    enforce_eager: bool = False
    start_timeout_s: float = START_TIMEOUT_S  # from start to ready, else it is started again
    extra_env: dict[str, str] = field(default_factory=dict)
    cpu: bool = field(init=False, default=True)  # vLLM's torch sees no GPU (``_check_python``)

    def __post_init__(self) -> None:
        if not Path(self.python).is_file():
            raise ConfigError(
                f"the vLLM interpreter {self.python} does not exist",
                hint="Build its environment with `make vllm` (or install vLLM in a virtual "
                "environment of its own) and name its python with --vllm-python or "
                "MODELYARD_VLLM_PYTHON.",
                field="vllm_python",
            )
        if self.max_lora_rank not in LORA_RANKS:
            raise ConfigError(
                f"--vllm-max-lora-rank {self.max_lora_rank}: vLLM takes one of "
                f"{', '.join(map(str, LORA_RANKS))}",
                field="vllm_max_lora_rank",
            )
        if self.max_loras < 1:
            raise ConfigError("--vllm-max-loras must be at least 1", field="vllm_max_loras")
        if not self.start_timeout_s > 0:
            raise ConfigError(f"--vllm-start-timeout-s is {self.start_timeout_s}; it must be "
                              "above 0", field="vllm_start_timeout_s")  # fmt: skip
        # vLLM refuses these when it starts, and its supervisor would restart it forever
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"--dtype {self.dtype!r} is not one vLLM takes here: use {', '.join(DTYPES)}",
                field="dtype",
            )
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ConfigError(
                f"--vllm-max-cpu-loras {self.max_cpu_loras} is below --vllm-max-loras "
                f"{self.max_loras}: vLLM keeps at least the adapters of one batch in host memory",
                hint=f"Give --vllm-max-cpu-loras {self.max_loras} or more, or leave it out.",
                field="vllm_max_cpu_loras",
            )
        self._check_python()

    def _check_python(self) -> None:
        """The interpreter must have vLLM: without it every start fails and is retried
        forever, and each request gets a 503. ``find_spec`` answers without importing it.
        Whether vLLM runs on a GPU is asked of its own torch, not of modelyard's (a CPU
        build here must not start a CUDA vLLM in float32 and eager mode)."""
        probe = (
            "import importlib.util, sys\n"
            "if importlib.util.find_spec('vllm') is None: sys.exit(1)\n"
            "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"
        )
        try:
            done = subprocess.run([self.python, "-c", probe], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"the vLLM interpreter {self.python} cannot be run: {exc}",
                field="vllm_python",
            ) from None
        if done.returncode != 0:
            raise ConfigError(
                f"the interpreter {self.python} has no vllm package",
                hint="Name the python of vLLM's own environment (`make vllm` builds "
                ".venv-vllm/bin/python) with --vllm-python or MODELYARD_VLLM_PYTHON.",
                field="vllm_python",
            )
        object.__setattr__(self, "cpu", done.stdout.decode().strip() != "cuda")

    def command(self, model: str, name: str, port: int) -> list[str]:
        cpu = self.cpu
        dtype = "float32" if cpu and self.dtype == "auto" else self.dtype
        args = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model, "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
            "--enable-lora", "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras),
            # each non-streamed answer says when its first token came (``metrics``)
            "--enable-per-request-metrics",
        ]  # fmt: skip
        for flag, value in (
            ("--max-cpu-loras", self.max_cpu_loras),
            ("--max-model-len", self.max_model_len),
            ("--gpu-memory-utilization", self.gpu_memory_utilization),
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--max-num-seqs", self.max_num_seqs),
        ):
            if value is not None:
                args += [flag, str(value)]
        if self.enforce_eager or cpu:
            args.append("--enforce-eager")
        return args

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="true",
            VLLM_NO_USAGE_STATS="1",
            VLLM_DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            VLLM_CPU_KVCACHE_SPACE=f"{self.kv_cache_gb:g}",
            # vLLM closes an idle keep-alive connection after 5 s by default, a second after
            # our pool stops reusing one (``_interruptible.KEEPALIVE_S``, 4 s): on a loaded
            # machine a request sent on a connection the server was closing at that moment
            # failed without reaching vLLM. The server now keeps them far longer than we do.
            VLLM_HTTP_TIMEOUT_KEEP_ALIVE=str(SERVER_KEEPALIVE_S),
        )
        env.update(self.extra_env)
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class VLLMProcess:
    """One vLLM server for the model in ``model`` (a directory), served as ``name``."""

    def __init__(self, options: VLLMOptions, model: str, name: str, log_path: Path) -> None:
        self.options, self.model, self.name, self.log_path = options, model, name, log_path
        self.port = 0
        self.restarts = 0
        self.problem: str | None = None  # why it is not ready, for error messages
        self.on_restart: list[object] = []  # callables run after a restart (adapters are lost)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name=f"vllm-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the process and its supervisor (returns at once; see ``wait_ready``)."""
        self._thread.start()

    def ready(self) -> bool:
        """Warmed up and still alive: a killed server is not ready even before its supervisor,
        which polls twice a second, has seen it die."""
        proc = self._proc
        return self._ready.is_set() and proc is not None and proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def dying(self, within_s: float) -> bool:
        """Not ready, or exiting within ``within_s``: a connection its death cut is closed a
        moment before the process can be seen to have exited."""
        proc = self._proc
        if not self.ready() or proc is None:
            return True
        try:
            proc.wait(within_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.port = free_port()
        command = self.options.command(self.model, self.name, self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            return subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.options.env(),
                start_new_session=True,  # its own group: its workers are stopped with it
            )  # fmt: skip

    def _supervise(self) -> None:
        failures = 0
        why: str | None = None  # why the last one was started again: kept while this starts
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = proc = self._spawn()
            log.info("vLLM for %s starting (pid %d, port %d)", self.name, proc.pid, self.port)
            # a restart keeps saying what happened ("starting" alone hid a crash from the 503s)
            starting = "starting" if why is None else f"{why}; restarting"
            self.problem = starting
            ready = self._await_ready(proc)
            if ready:
                failures = 0
                self.problem = None
                self._ready.set()
                log.info("vLLM for %s ready on port %d", self.name, self.port)
                while proc.poll() is None and not self._stopping.wait(0.5):
                    pass
            self._ready.clear()
            if self._stopping.is_set():
                return
            code = proc.poll()
            self._kill_group(proc)
            failures += 1
            self.restarts += 1
            wait = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
            # why it is started again: what kept it from getting ready, else its exit
            why = self.problem if not ready and self.problem != starting else None
            why = why or f"it stopped (exit {code})"
            self.problem = f"{why}; restarting"
            log.error("vLLM for %s: %s; restarting in %g s (log: %s)", self.model, why, wait,
                      self.log_path)  # fmt: skip
            for hook in self.on_restart:
                hook()  # type: ignore[operator]
            if self._stopping.wait(wait):
                return

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.options.start_timeout_s
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < deadline and not self._stopping.is_set():
                if proc.poll() is not None:
                    return False
                try:
                    if http.get(self.url + "/health").status_code == 200:
                        warm = http.post(self.url + "/v1/completions", json={
                            "model": self.name, "prompt": "ok", "max_tokens": 1})  # fmt: skip
                        if warm.status_code == 200:
                            return True
                        self.problem = f"its warm-up request failed ({warm.status_code})"
                        return False
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        self.problem = (f"it was not ready within {self.options.start_timeout_s:g} s "
                        "(--vllm-start-timeout-s)")  # fmt: skip
        return False

    def kill(self) -> None:
        """SIGKILL the server with its engine processes, as a crash of the machine's vLLM
        (tests of crashes): the supervisor restarts it. (The server process alone is not
        enough: vLLM's engine and API processes then finish the requests they hold.)"""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (vLLM finishes its streams as aborted and exits), then SIGKILL the group."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
        if proc is not None:
            self._kill_group(proc)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL whatever is left of the process group (vLLM's workers outlive a killed
        server), and reap the server."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


__all__ = ["DTYPES", "LORA_RANKS", "VLLMOptions", "VLLMProcess", "free_port"]
