"""``modelyard batch run``: answer every row of a file through the data plane."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from modelyard.cli._common import (
    acting_as,
    bad_input,
    err_console,
    open_artifacts,
    open_store,
    print_json,
    settings,
)
from modelyard.cli._progress import ProgressLines, live
from modelyard.errors import ConfigError, EngineError, ModelyardError

if TYPE_CHECKING:
    from modelyard.batch import EngineSpec, FileJobSpec, JobSummary, RayOptions, RunnerFactory
    from modelyard.serving import Engine, ServerLimits, VLLMEngine, VLLMOptions
    from modelyard.store import ModelVersion, Store

OnStart = Callable[["JobSummary", bool], None]

app = typer.Typer(
    help="Batch inference: every row of a file answered through an endpoint.",
    no_args_is_help=True,
)


def _fields(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise ConfigError(
                f"--field {pair!r} is not NAME=COLUMN", hint="e.g. --field instruction=question"
            )
        fields[name.strip()] = column.strip()
    return fields


ENDPOINT = typer.Option(
    None, "--endpoint", "-e", help="The endpoint to ask (its traffic plan chooses versions)."
)
API_KEY = typer.Option(
    None,
    "--api-key",
    envvar="MODELYARD_API_KEY",
    show_envvar=True,
    help="A tenant's API key with the infer scope (the variable keeps it out of `ps`).",
)
MODEL = typer.Option(
    None,
    "--model",
    help="As an operator, without a key: ask this version alone (NAME:VERSION, "
    "NAME@alias), past any endpoint.",
)
TENANT = typer.Option(
    None, help="With --model: the tenant whose records and policy apply (default: owner)."
)
"""Who is asked and as whom: shared by ``batch run`` and ``stream run``."""


VLLM_ONLY = ("vllm_python", "vllm_max_loras", "vllm_max_lora_rank", "vllm_max_model_len",
             "vllm_max_num_seqs", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size",
             "vllm_kv_cache_gb", "vllm_start_timeout_s")  # fmt: skip
NOT_VLLM = ("device", "max_batch_size")  # vLLM places and batches its own


@app.command("run")
def run(
    ctx: typer.Context,
    input: Path | None = typer.Argument(
        None, help="The rows to answer: a .jsonl, .csv or .parquet file (or --input)."
    ),
    input_option: Path | None = typer.Option(
        None, "--input", "-i", help="The rows to answer, as an option (instead of INPUT)."
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Where the answers go (.jsonl, .csv or .parquet): one row per input row. "
        "While the job runs its state is in OUTPUT.batch/; run the same command again to "
        "resume a job that stopped.",
    ),
    endpoint: str | None = ENDPOINT,
    api_key: str | None = API_KEY,
    model: str | None = MODEL,
    tenant: str | None = TENANT,
    prompt_column: str | None = typer.Option(
        None, help="A text column, sent as the user's message."
    ),
    messages_column: str | None = typer.Option(
        None, help='A column of [{"role", "content"}] messages (JSON text in a CSV).'
    ),
    field: list[str] = typer.Option(
        [],
        "--field",
        metavar="NAME=COLUMN",
        help="A template field from a column, NAME=COLUMN: instruction (and input), or "
        "text. Without a mapping, a messages, prompt, instruction or text column is used.",
    ),
    system: str | None = typer.Option(
        None, help="A system message before each prompt (the instruction a version trained on)."
    ),
    id_column: list[str] = typer.Option(
        [],
        "--id-column",
        metavar="COLUMN",
        help="An input column copied to the output to join on (repeatable).",
    ),
    max_tokens: int = typer.Option(64, min=1, help="Most tokens of each answer."),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 is greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling (above 0, at most 1)."),
    stop: list[str] = typer.Option([], "--stop", metavar="TEXT", help="A stop string (up to 4)."),
    seed: int | None = typer.Option(None, help="A seed for sampled answers."),
    concurrency: int | None = typer.Option(
        None,
        min=1,
        help="Rows in flight at once (the engine batches them together); default: as many "
        "as it decodes at once, --max-batch-size, or --vllm-max-num-seqs (256) on vLLM.",
    ),
    max_errors: int | None = typer.Option(
        None, min=0, help="Stop once more rows than this have failed (default: never)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over: remove the output and any stopped job's state."
    ),
    engine: str = typer.Option(
        "transformers",
        help="transformers (embedded), vllm (a vLLM server started for the job; see "
        "--vllm-python) or echo (a fake that answers the prompt).",
    ),
    device: str = typer.Option("auto", help="transformers engine: auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="transformers engine: auto, float32, bfloat16..."),
    max_batch_size: int = typer.Option(
        16, min=1, help="Most rows decoded together in the engine's running batch."
    ),
    max_adapters: int = typer.Option(8, min=1, help="Adapters kept loaded (LRU)."),
    request_timeout_s: float = typer.Option(
        600.0, min=0.0, help="A row running longer fails with a timeout; 0: no timeout."
    ),
    echo_delay_ms: float = typer.Option(
        0.0, min=0.0, help="With --engine echo: pause before each word (tests)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    vllm_python: str | None = typer.Option(
        None,
        envvar="MODELYARD_VLLM_PYTHON",
        help="--engine vllm: the python of vLLM's own environment (default: "
        "./.venv-vllm/bin/python, which `make vllm` builds).",
    ),
    vllm_max_loras: int = typer.Option(
        4, "--vllm-max-loras", "--max-loras", min=1, help="--engine vllm: adapters in one batch."
    ),
    vllm_max_lora_rank: int = typer.Option(64, help="--engine vllm: largest LoRA rank."),
    vllm_max_model_len: int | None = typer.Option(
        None, min=1, help="--engine vllm: context length (default: the model's)."
    ),
    vllm_max_num_seqs: int | None = typer.Option(
        None, min=1, help="--engine vllm: requests vLLM decodes at once (default 256)."
    ),
    vllm_gpu_memory_utilization: float | None = typer.Option(
        None, min=0.05, max=1.0, help="--engine vllm: share of GPU memory vLLM may take."
    ),
    vllm_tensor_parallel_size: int | None = typer.Option(
        None, min=1, help="--engine vllm: GPUs one model is split over."
    ),
    vllm_kv_cache_gb: float = typer.Option(
        2.0, min=0.1, help="--engine vllm on a CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)."
    ),
    vllm_start_timeout_s: float = typer.Option(
        1200.0, min=1.0, help="--engine vllm: how long vLLM may take to become ready."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Answer the rows on a Ray cluster (the ray extra): auto (the one this machine "
        "belongs to), ray://HOST:10001, HOST:6379, or local (a Ray on this machine for this "
        "job). Each actor runs its own engine.",
    ),
    ray_actors: int = typer.Option(1, min=1, help="--ray: actors, each with an engine."),
    ray_cpus: float = typer.Option(1.0, min=0.01, help="--ray: CPUs each actor asks for."),
    ray_gpus: float = typer.Option(0.0, min=0.0, help="--ray: GPUs each actor asks for."),
) -> None:
    """Answer every row of INPUT through an endpoint (or, as an operator, one version)
    and write OUTPUT: the row number, the --id-column values, answer, finish_reason,
    prompt_tokens, completion_tokens, version, record_id and error of each row.

    The rows go through the same data plane as the HTTP API: the traffic plan, the
    key's rate limits (as one more server replica), the tenant's storage policy, and
    one inference record per row (source batch, with the job's id). A job stopped at
    any moment (Ctrl+C, kill -9) resumes when the same command runs again: rows already
    answered are skipped, and no row is answered twice in the output or the records.
    Failed rows keep their error; bad input exits 2 before anything is written.

    With --ray the rows are answered by actors on a Ray cluster, each with its own
    engine and store connection; this process keeps the job's state and output.
    """
    from modelyard.batch import (
        ColumnMapping,
        EngineSpec,
        FileJobSpec,
        JobRunner,
        RayOptions,
        ray_cluster,
        run_file_job,
    )
    from modelyard.serving import EchoEngine, SamplingParams, ServerLimits

    rows = input or input_option
    if rows is None or (input is not None and input_option is not None):
        raise ConfigError(
            "give the rows to answer once: as INPUT or as --input"
            if input is not None
            else "no rows to answer: give INPUT (a .jsonl, .csv or .parquet file)",
            hint="e.g. modelyard batch run tickets.parquet -o answered.parquet -e ENDPOINT",
            field="--input",
        )
    if concurrency is None:  # as many as the engine decodes at once: more would only queue
        concurrency = max_batch_size
        if engine == "vllm":
            from modelyard.serving import VLLM_MAX_NUM_SEQS

            concurrency = vllm_max_num_seqs or VLLM_MAX_NUM_SEQS
    with bad_input():
        spec = FileJobSpec(
            input=rows, output=output,
            params=SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                  stop=tuple(stop), seed=seed),
            mapping=ColumnMapping(prompt=prompt_column, messages=messages_column,
                                  fields=_fields(field), system=system),
            id_columns=tuple(id_column), endpoint=endpoint, api_key=api_key, model=model,
            tenant=tenant, concurrency=concurrency, max_errors=max_errors, overwrite=overwrite,
            engine=engine,
        )  # fmt: skip
    limits = ServerLimits(
        max_tokens=max(max_tokens, 256), request_timeout_s=request_timeout_s or None
    )
    _refuse_unread(ctx, engine)
    vllm = None
    if engine == "vllm":
        if ray_address:
            raise ConfigError(
                "--engine vllm does not run on --ray: each actor would start a vLLM server",
                hint="Run the job without --ray (one vLLM server answers it), or with "
                "--engine transformers on the cluster.",
            )
        vllm = _vllm_options(
            python=vllm_python, dtype=dtype, max_loras=vllm_max_loras,
            max_lora_rank=vllm_max_lora_rank, max_model_len=vllm_max_model_len,
            max_num_seqs=vllm_max_num_seqs, gpu_memory_utilization=vllm_gpu_memory_utilization,
            tensor_parallel_size=vllm_tensor_parallel_size, kv_cache_gb=vllm_kv_cache_gb,
            start_timeout_s=vllm_start_timeout_s,
        )  # fmt: skip
    engines = EngineSpec(engine, device, dtype, max_batch_size,
                         max(max_adapters, vllm_max_loras) if vllm else max_adapters,
                         max(256, concurrency), echo_delay_ms, vllm,
                         str(settings().home / "logs"), request_timeout_s or 600.0)  # fmt: skip
    if not ray_address and (ray_actors, ray_cpus, ray_gpus) != (1, 1.0, 0.0):
        raise ConfigError("--ray-actors, --ray-cpus and --ray-gpus go with --ray ADDRESS")
    cluster = RayOptions(ray_address, ray_actors, ray_cpus, ray_gpus) if ray_address else None
    store = open_store()
    runner: RunnerFactory = JobRunner
    where: AbstractContextManager[None] = nullcontext()
    if cluster is None:
        chosen = engines.build(store, open_artifacts)
    else:  # the actors answer; this process's plane only checks the key and the endpoint
        chosen, runner = EchoEngine(), _ray_runner(cluster, engines, limits)
        where = ray_cluster(cluster, store_dialect=store.dialect)
    try:
        with where, _bar(quiet=json_out) as bar, bad_input(), _sigterm_stops():
            started: OnStart = bar.start
            if engine == "vllm":
                started = _after_vllm(store, chosen, spec, vllm_start_timeout_s, bar.start)
            if cluster is None:  # an actor reads the key from its own node's environment
                started = _keys_first(store, spec, started)
            summary: JobSummary = run_file_job(
                store, chosen, spec, limits=limits, progress=bar.update, on_start=started,
                runner=runner,
            )  # fmt: skip
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, _Terminated)
        _interrupted(output, "SIGTERM" if terminated else "Ctrl+C")
        raise typer.Exit(143 if terminated else 130) from None
    finally:
        chosen.close()
        store.close()
    if json_out:
        print_json(summary.to_json() | {"output": str(output)})
    else:
        _print_summary(summary, output)
    if summary.stopped:
        raise ModelyardError(
            f"the job stopped: {summary.stopped} (the first: {summary.first_error})",
            hint="Fix the cause, then run the same command again (with a higher "
            "--max-errors) to go on from where it stopped.",
        )


def _refuse_unread(ctx: typer.Context, engine: str) -> None:
    """Options given on the command line that ``engine`` would not read: refused rather
    than ignored."""
    for name in (*VLLM_ONLY, *NOT_VLLM):
        source = ctx.get_parameter_source(name)
        if (
            source is None
            or source.name != "COMMANDLINE"
            or (name in VLLM_ONLY) == (engine == "vllm")
        ):
            continue
        flag = "--" + name.replace("_", "-")
        if name in VLLM_ONLY:
            raise ConfigError(f"{flag} is read only by --engine vllm, not by --engine {engine}")
        raise ConfigError(
            f"{flag} is not read by --engine vllm: vLLM places and batches its own rows",
            hint="Leave it out; --vllm-max-num-seqs bounds vLLM's batches, "
            "--vllm-tensor-parallel-size its GPUs (CUDA_VISIBLE_DEVICES shows them).",
        )


def _vllm_options(*, python: str | None, **options: object) -> VLLMOptions:
    """vLLM's options, its interpreter checked (that of `make vllm` here when not given)."""
    from modelyard.cli._serve import MADE_VLLM_PYTHON
    from modelyard.serving import VLLMOptions

    if python is None and not MADE_VLLM_PYTHON.is_file():
        raise ConfigError(
            f"--engine vllm needs the python of vLLM's environment, and there is no "
            f"{MADE_VLLM_PYTHON} here",
            hint="Build it with `make vllm` (in modelyard's checkout, and run the job there), "
            "or pass --vllm-python PATH (or set MODELYARD_VLLM_PYTHON).",
        )
    python = python or str(MADE_VLLM_PYTHON.absolute())  # not resolved: a venv's python is a link
    return VLLMOptions(python=python, **options)  # type: ignore[arg-type]


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a supervisor stopping the job): it stops as Ctrl+C does."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While the job runs, a SIGTERM (systemd, a Kubernetes Job's pod deleted) stops it as
    Ctrl+C does: a vLLM server of the job's (in a process group of its own) is stopped with
    it, not left, and the log says how many answered rows are kept for the next run."""

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _after_vllm(
    store: Store, engine: Engine, spec: FileJobSpec, timeout_s: float, then: OnStart
) -> OnStart:
    """``then``, once the vLLM server of every version the job may ask is ready: a row sent
    before would fail at once (503). Called when the job's input, key and endpoint are
    checked, before any row is sent."""

    def start(summary: JobSummary, resumed: bool) -> None:
        vllm: VLLMEngine = engine.local  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout_s
        for version in _job_versions(store, spec):
            err_console.print(f"waiting for vLLM to serve {version.ref} (its log: "
                              f"{vllm.process(version).log_path}); then rows go "
                              f"{spec.concurrency} at a time")  # fmt: skip
            if not vllm.warm(version, max(0.0, deadline - time.monotonic())):
                process = vllm.process(version)
                raise EngineError(
                    f"vLLM for {version.ref} was not ready within {timeout_s:g} s "
                    f"({process.problem}); no row was sent",
                    hint=f"Its log says why: {process.log_path}. Fix the cause (or give "
                    "--vllm-start-timeout-s more), then run the same command again.",
                )
        then(summary, resumed)

    return start


def _job_versions(store: Store, spec: FileJobSpec) -> list[ModelVersion]:
    """The versions with weights (adapters and full) the job's rows may go to."""
    from modelyard.batch import job_versions

    versions = job_versions(store, endpoint=spec.endpoint, model=spec.model)
    return [v for v in versions if v.kind in ("adapter", "full")]


def _keys_first(store: Store, spec: FileJobSpec, then: OnStart) -> OnStart:
    """``then``, once every upstream version the job may ask has its key here."""
    from modelyard.batch import check_upstream_keys, job_versions

    def start(summary: JobSummary, resumed: bool) -> None:
        versions = job_versions(store, endpoint=spec.endpoint, model=spec.model)
        check_upstream_keys(store, open_artifacts(), versions)
        then(summary, resumed)

    return start


def _interrupted(output: Path, by: str) -> None:
    """Ctrl+C or SIGTERM (``by``): say where the job stands (its kept answers stay for the
    next run)."""
    from modelyard.batch import state_dir

    state = state_dir(output)
    if state.is_dir():
        kept = 0
        for part in state.glob("part-*.jsonl"):
            with part.open("rb") as lines:
                kept += sum(1 for _ in lines)
        err_console.print(
            f"stopped ({by}): {kept} answered rows are kept in {state}; run the same "
            "command again to answer the rest",
            markup=False,
        )
    else:
        err_console.print(f"stopped ({by}) before the job started: nothing was written")


def job_engine(
    kind: str,
    store: Store,
    device: str,
    dtype: str,
    max_batch_size: int,
    max_adapters: int,
    max_queue: int,
    echo_delay_ms: float,
) -> Engine:
    """The engine the job's process runs, as `serve` builds it (upstream versions answer
    from their server whatever it is)."""
    from modelyard.batch import EngineSpec

    if kind == "vllm":
        raise ConfigError("stream run does not take --engine vllm: use transformers or echo",
                          hint="batch run takes --engine vllm.")  # fmt: skip
    spec = EngineSpec(kind, device, dtype, max_batch_size, max_adapters, max_queue, echo_delay_ms)
    return spec.build(store, open_artifacts)


def _ray_runner(options: RayOptions, engine: EngineSpec, limits: ServerLimits) -> RunnerFactory:
    """A runner whose rows Ray actors answer, each building ``engine`` and the store from
    this command's settings."""
    from modelyard.batch import RayJobRunner, WorkerSpec

    worker = WorkerSpec.of(settings(), actor=acting_as(settings()), engine=engine, limits=limits)
    return functools.partial(RayJobRunner, options=options, worker=worker)


class _RowsPerSecond(ProgressColumn):
    """Rows answered by this run per second of it (an earlier run's rows left out)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.completed - task.fields.get("base", 0)
        return Text(f"{done / elapsed:.1f} rows/s" if elapsed > 0 else "", style="dim")


class _Bar:
    """The job's progress: rows done of the job's rows, rows/s, time left. Shown from the
    job's start (nothing for input refused before it), on stderr: a live bar on a terminal,
    else (a log, a pipe, where a bar is drawn only when it ends) a line every
    ``LOG_EVERY_S`` (``cli._progress``)."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._first = True
        self._lines: ProgressLines | None = None

    def start(self, summary: JobSummary, resumed: bool) -> None:
        if self._quiet:
            return
        word = "resuming" if resumed else "job"
        if not live(err_console):
            name = f"{word} {summary.job_id}"
            self._lines = ProgressLines(err_console, name, "rows", summary.rows)
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RowsPerSecond(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=err_console,
        )
        self._progress.start()
        self._task = self._progress.add_task(f"{word} {summary.job_id}", total=summary.rows, base=0)

    def update(self, done: int, total: int | None) -> None:
        if self._lines is not None:
            self._lines.update(done, total)
        if self._progress is not None and self._task is not None:
            if self._first:  # rows answered by an earlier run: no part of the rate
                self._first = False
                self._progress.reset(self._task, completed=done, total=total, base=done)
            self._progress.update(self._task, completed=done, total=total)

    def stop(self) -> None:
        if self._lines is not None:
            self._lines.finish()
        if self._progress is not None:
            self._progress.stop()


@contextmanager
def _bar(*, quiet: bool) -> Iterator[_Bar]:
    bar = _Bar(quiet)
    try:
        yield bar
    finally:
        bar.stop()


def _print_summary(s: JobSummary, output: Path) -> None:
    earlier = f", {s.skipped} answered by an earlier run" if s.skipped else ""
    again = f", {s.replaced} answered again (stopped before they were kept)" if s.replaced else ""
    retried = f", {s.retried} asked again (failed on the server's side)" if s.retried else ""
    err_console.print(
        f"job {s.job_id}: {s.rows} rows, {s.answered} answered now{earlier}{again}{retried}, "
        f"{s.failed} failed"
    )
    if s.first_error:
        err_console.print(f"  first failure: {s.first_error}", markup=False)
    versions = ", ".join(f"{v} {n}" for v, n in sorted(s.versions.items())) or "none"
    cost = f"{s.cost:.6g}" if s.cost is not None else "n/a (no token prices: monitor price set)"
    err_console.print(
        f"tokens: {s.prompt_tokens} prompt + {s.completion_tokens} completion; cost {cost}; "
        f"versions: {versions}"
    )
    if s.answered:
        err_console.print(f"{s.rows_per_s:.1f} rows/s over {s.elapsed_s:.1f} s")
    if s.already_whole:
        err_console.print(
            f"{output} was already whole: nothing asked, nothing written "
            "(--overwrite answers every row again)"
        )
    elif not s.stopped:
        err_console.print(f"wrote {output}")
