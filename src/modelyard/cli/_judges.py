"""``modelyard judges``: models that score other models' answers, defined once and named
everywhere as ``judge.NAME`` (evaluate, gates, rollout guards, alert rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from modelyard.cli._admin import JSON
from modelyard.cli._common import console, open_store, out_file, print_json, progress_bar

app = typer.Typer(
    help="Judges: an endpoint or upstream model that scores answers from 1 to 5 on a rubric "
    "(correctness against a reference, faithfulness to a context, relevance, safety, or a "
    "custom prompt). Its mean score is the metric judge.NAME in `evaluate`, gates, rollout "
    "guards and alert rules; every call is kept with its score, tokens and cost, and an "
    "answer already scored is not asked again."
)


def _judge_json(judge: Any, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    data = {
        "name": judge.name, "metric": judge.metric, "revision": judge.revision,
        "rubric": judge.rubric, "prompt": judge.prompt, "url": judge.base_url,
        "model": judge.model, "api_key_env": judge.api_key_env,
        "max_tokens": judge.max_tokens, "input_per_1k": judge.input_per_1k,
        "output_per_1k": judge.output_per_1k, "created_at": judge.created_at,
        "created_by": judge.created_by,
    }  # fmt: skip
    if usage is not None:
        data["usage"] = usage
    return data


@app.command("add")
def judges_add(
    name: str = typer.Argument(..., help="The judge's name: its metric is judge.NAME."),
    rubric: str = typer.Option(
        ..., "--rubric", help="correctness, faithfulness, relevance, safety or custom."
    ),
    url: str = typer.Option(
        ..., "--url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."
    ),
    model: str = typer.Option(
        ..., "--model", help="The endpoint (on a modelyard server) or the upstream's model."
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="The environment variable holding its API key (never the key)."
    ),
    prompt_file: Path | None = typer.Option(
        None,
        "--prompt-file",
        help="The custom rubric's template, sent as the user message: {question}, {context}, "
        "{reference} and {answer} are filled in ({answer} is required); the system message "
        "asks for 'Score: N' (1-5).",
    ),
    max_tokens: int = typer.Option(16, "--max-tokens", help="Longest answer asked of the judge."),
    input_per_1k: float = typer.Option(
        0.0, "--input-per-1k", help="Price per 1,000 prompt tokens."
    ),
    output_per_1k: float = typer.Option(
        0.0, "--output-per-1k", help="Price per 1,000 completion tokens."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Change an existing judge (new revision)."
    ),
    json_out: bool = JSON,
) -> None:
    """Define a judge (audited). A changed judge gets a new revision and judges afresh."""
    from modelyard.errors import ConfigError
    from modelyard.judges import check_definition

    prompt = None
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"--prompt-file {prompt_file}: {exc.strerror}", field="prompt_file"
            ) from None
    check_definition(
        rubric=rubric, prompt=prompt, base_url=url, model=model, api_key_env=api_key_env,
        max_tokens=max_tokens,
    )  # fmt: skip
    with open_store() as store:
        judge = store.put_judge(
            name, rubric=rubric, base_url=url, model=model, prompt=prompt,
            api_key_env=api_key_env, max_tokens=max_tokens, input_per_1k=input_per_1k,
            output_per_1k=output_per_1k, replace=replace,
        )  # fmt: skip
    if json_out:
        print_json(_judge_json(judge))
        return
    console.print(
        f"[green]judge {judge.name}[/] revision {judge.revision}: {judge.rubric} by "
        f"{judge.model} at {judge.base_url}; name it as {judge.metric}",
        soft_wrap=True,
    )


@app.command("list")
def judges_list(json_out: bool = JSON) -> None:
    """The judges, with their calls and cost so far."""
    with open_store() as store:
        rows = [_judge_json(j, store.judge_usage(j.name)) for j in store.list_judges()]
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no judges: define one with `modelyard judges add`")
        return
    table = Table("judge", "rubric", "model", "url", "rev", "calls", "failed", "cost")
    for row in rows:
        usage = row["usage"]
        table.add_row(
            row["name"], row["rubric"], row["model"], row["url"], str(row["revision"]),
            str(usage["calls"]), str(usage["failed"]), f"{usage['cost']:.6f}",
        )  # fmt: skip
    console.print(table)


@app.command("show")
def judges_show(
    name: str = typer.Argument(..., help="The judge's name."), json_out: bool = JSON
) -> None:
    """One judge: its definition, prompt and usage."""
    with open_store() as store:
        judge = store.get_judge(name)
        data = _judge_json(judge, store.judge_usage(name))
    if json_out:
        print_json(data)
        return
    for key, value in data.items():
        if key not in ("usage", "prompt"):
            console.print(f"{key}: {value}", soft_wrap=True)
    usage = {**data["usage"], "cost": f"{data['usage']['cost']:.6f}"}  # as `judges list` shows it
    console.print("usage: " + ", ".join(f"{k} {v}" for k, v in usage.items()))
    if data["prompt"]:
        console.print("prompt:\n" + data["prompt"], soft_wrap=True, markup=False)


@app.command("remove")
def judges_remove(name: str = typer.Argument(..., help="The judge's name.")) -> None:
    """Remove a judge and what it scored (audited)."""
    with open_store() as store:
        store.remove_judge(name)
    console.print(f"removed judge {name}")


@app.command("score")
def judges_score(
    name: str = typer.Argument(..., help="The judge."),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Answers to score (.jsonl, .json, .csv or .parquet): an 'answer' "
        "column, and what the rubric needs of 'question', 'reference' and 'context'.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write each row with its score, the judge's answer and any error."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="Calls at once."),
    json_out: bool = JSON,
) -> None:
    """Score a file of answers; print the mean, and how many were scored, cached or failed."""
    from modelyard.batch import table_kind, write_table
    from modelyard.data import read_rows
    from modelyard.errors import ConfigError
    from modelyard.judges import FIELDS, render, run_judge

    if out is not None:  # before the judge is paid for its scores, not after
        table_kind(out_file(out), "--out")
    rows = read_rows(data, "Add rows with an 'answer' column.")
    items = [_input(row, i, FIELDS) for i, row in enumerate(rows, start=1)]
    with open_store() as store:
        judge = store.get_judge(name)
        for number, item in enumerate(items, start=1):  # said before the bar, with the row
            try:
                render(judge.rubric, judge.prompt, item)
            except ConfigError as exc:
                raise ConfigError(f"--data row {number}: {exc.message}", hint=exc.hint) from None
        with progress_bar(f"judge {name}", len(items), unit="answers") as update:
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                update(done, len(items), "")

            run = run_judge(judge, items, cache=store, concurrency=concurrency, progress=step)
    if out is not None:
        scored = [
            {**row, judge.metric: j.score, "judge_output": j.output, "judge_error": j.error}
            for row, j in zip(rows, run.judgements, strict=True)
        ]
        write_table(out, scored, list(dict.fromkeys(c for row in scored for c in row)))
    summary = run.summary()
    if json_out:
        print_json(summary)
        return
    mean = "none" if run.mean is None else f"{run.mean:.3f}"
    console.print(
        f"{judge.metric}: {mean} over {run.scored} of {len(items)} answers "
        f"({run.cached} from the cache, {run.failed} without a score, cost {run.cost:.6f})",
        soft_wrap=True,
    )
    for error in summary["errors"]:
        console.print(f"[yellow]no score:[/] {error}", soft_wrap=True)


def _input(row: dict[str, Any], number: int, fields: tuple[str, ...]) -> Any:
    from modelyard.errors import DataError
    from modelyard.judges import JudgeInput

    values: dict[str, str | None] = {}
    for field in fields:
        value = row.get(field)
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"--data row {number}: {field} is {type(value).__name__}, not text",
                hint=f'Give {field} as a string (in JSON, quoted: "{field}": "42").',
                row=number,
            )
        if field != "answer" and value is not None and not value.strip():
            value = None  # an empty CSV cell: no question, reference or context, not an empty one
        values[field] = value
    if values["answer"] is None:
        columns = ", ".join(row) or "none"
        raise DataError(
            f"--data row {number}: no 'answer' (its columns: {columns})",
            hint="Each row needs the answer to score, in a column named 'answer'.", row=number,
        )  # fmt: skip
    answer = values.pop("answer")
    assert answer is not None
    return JudgeInput(answer=answer, **values)  # a file's answers belong to no live record


@app.command("scores")
def judges_scores(
    name: str = typer.Argument(..., help="The judge."),
    endpoint: str = typer.Option(..., "--endpoint", help="Whose live records."),
    since: str = typer.Option("24h", "--since", help="A date, or a duration back from now."),
    json_out: bool = JSON,
) -> None:
    """What a judge made of an endpoint's live records (online judging, rollout guards), per
    version: how many it scored, their mean, lowest and highest."""
    from modelyard.durations import parse_since

    start = parse_since(since)
    with open_store() as store:
        store.get_judge(name)
        store.get_endpoint(endpoint)
        rows = store.judge_summary(name, endpoint, start)
    data = [
        {"version": ref, "scores": n, "mean": mean, "min": low, "max": high}
        for ref, n, mean, low, high in rows
    ]
    if json_out:
        print_json(data)
        return
    if not data:
        console.print(
            f"judge {name} scored no live record of {endpoint} since {start:%Y-%m-%d %H:%M} UTC"
        )
        return
    table = Table("version", "scores", "mean", "min", "max", title=f"judge.{name} on {endpoint}")
    for row in data:
        table.add_row(
            str(row["version"]), str(row["scores"]), f"{row['mean']:.2f}", f"{row['min']:g}",
            f"{row['max']:g}",
        )  # fmt: skip
    console.print(table)
