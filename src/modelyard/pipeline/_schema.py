"""The pipeline YAML: ``from_records`` → ``finetune`` → ``rollout``, checked before anything runs.

``load_pipeline`` reads the file and checks every field it can without a store: unknown
keys (named with the nearest valid one), the window, the filters, the data format, the
finetune config (read from ``finetune.config`` with ``finetune.overrides`` merged in, its
``data.train`` set to the rows ``from_records`` writes), the rollout's steps, bake time
and guards. Each error names the field (``from_records.min_score``). Relative paths are
taken from the pipeline file's directory; those inside a finetune config from that
config's directory, as ``modelyard finetune`` reads them.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelyard.curate import RecordFilters, check_out
from modelyard.data import check_rules, get_format
from modelyard.delivery import DEFAULT_POLICY, check_policy, parse_steps
from modelyard.durations import is_duration, parse_duration, parse_since
from modelyard.errors import ConfigError
from modelyard.finetune import FinetuneConfig, parse_config
from modelyard.store import RolloutPolicy

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
STAGES = ("from_records", "finetune", "rollout")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FromRecordsSection(_Section):
    endpoint: str = Field(min_length=1)
    since: str | None = None
    window: str | None = None
    until: str | None = None
    version: int | None = Field(default=None, ge=1)
    status: str | None = None
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    labels: list[str] = Field(default_factory=list)
    format: str | None = None
    out: Path
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    exclude: list[Path] = Field(default_factory=list)
    fail_on: list[str] = Field(default_factory=list)

    @field_validator("labels", "fail_on", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class FinetuneSection(_Section):
    config: Path | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


class RolloutSection(_Section):
    endpoint: str | None = None
    strategy: Literal["canary", "blue-green"] = "canary"
    steps: str | list[int] | None = None
    bake: str = "5m"
    min_requests: int = Field(default=DEFAULT_POLICY.min_requests, ge=0)
    guards: list[str] = Field(default_factory=lambda: list(DEFAULT_POLICY.guards))
    promote_alias: str | None = Field(default=None, pattern=NAME_PATTERN)
    wait: bool = False
    timeout: str = "30m"


class PipelineFile(_Section):
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    from_records: FromRecordsSection
    finetune: FinetuneSection
    rollout: RolloutSection | None = None


@dataclass(frozen=True)
class RecordsPlan:
    """The ``from_records`` stage: which records, which rows, where they go."""

    endpoint: str
    since: str
    until: str | None
    version: int | None
    status: str | None
    min_score: float | None
    labels: tuple[str, ...]
    data_format: str
    out: Path
    dataset: str
    exclude: tuple[Path, ...]
    fail_on: tuple[str, ...]

    def filters(self, now: datetime | None = None) -> RecordFilters:
        """The window and filters, a duration taken back from ``now``."""
        now = now or datetime.now(UTC)
        start = parse_since(self.since, field="from_records.since", now=now)
        end = (
            now
            if self.until is None
            else parse_since(self.until, field="from_records.until", now=now, allow_future=True)
        )
        return RecordFilters(start, end, self.version, self.status, self.min_score, self.labels)


@dataclass(frozen=True)
class RolloutPlan:
    """The ``rollout`` stage: which endpoint, the policy, and whether to wait for the end."""

    endpoint: str
    strategy: str
    policy: RolloutPolicy
    promote_alias: str | None
    wait: bool
    timeout_s: float


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline file: its stages in order, ready to run."""

    name: str
    path: Path
    digest: str  # sha256 of the file's bytes
    records: RecordsPlan
    finetune: FinetuneConfig
    finetune_source: Path | None  # the finetune config file, when one was named
    rollout: RolloutPlan | None

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES if self.rollout is not None else STAGES[:2]


def _fail(path: Path, field: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"pipeline {path.name}: {field}: {message}", hint=hint, field=field)


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = PipelineFile
    for part in loc[:-1]:
        found = model.model_fields.get(str(part))
        annotation = found.annotation if found else None
        for candidate in getattr(annotation, "__args__", (annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
    return model


def _explain(path: Path, exc: ValidationError) -> ConfigError:
    """One clear error for the first problem: which field, why, what would be valid."""
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(part) for part in loc) or "pipeline"
    if first["type"] == "extra_forbidden":
        valid = sorted(_section_at(loc).model_fields)
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        maybe = f"Did you mean {near[0]!r}? " if near else ""
        return _fail(path, key, "unknown key", f"{maybe}Valid keys here: {', '.join(valid)}.")
    if first["type"] == "missing":
        return _fail(path, key, "required", "See docs/closing-the-loop.md.")
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "string_pattern_mismatch":
        message = "use letters, digits, '.', '_' and '-' (at most 100)"
    return _fail(path, key, message, "See docs/closing-the-loop.md.")


def _read_yaml(path: Path, field: str) -> tuple[Any, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{field}: {path} does not exist", field=field) from exc
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}", field=field) from exc
    try:
        return yaml.safe_load(raw), raw
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{field}: {path} is not valid YAML{where}",
            hint="Check the indentation and quoting there.",
            field=field,
        ) from exc


def _under(root: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``base``, section by section (a mapping merges, anything else wins)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _records(path: Path, section: FromRecordsSection, data_format: str) -> RecordsPlan:
    root = path.resolve().parent
    if section.since is not None and section.window is not None:
        raise _fail(path, "from_records.window", "give since or window, not both")
    if section.window is not None and not is_duration(section.window.strip()):
        raise _fail(
            path, "from_records.window", f"{section.window!r} is not a duration such as 7d or 12h"
        )
    since = section.since if section.since is not None else section.window
    if since is None:
        raise _fail(
            path, "from_records.since", "required: how far back (7d) or from when (2026-12-01)"
        )
    plan = RecordsPlan(
        endpoint=section.endpoint,
        since=since,
        until=section.until,
        version=section.version,
        status=section.status,
        min_score=section.min_score,
        labels=tuple(section.labels),
        data_format=data_format,
        out=_under(root, section.out),
        dataset=section.name or f"{section.endpoint}-records",
        exclude=tuple(_under(root, p) for p in section.exclude),
        fail_on=(),
    )
    try:
        check_out(plan.out, plan.exclude)  # as `data from-records --out`
    except ConfigError as exc:
        message = exc.message.replace(str(plan.out), str(section.out), 1)
        raise _fail(path, "from_records.out", message, exc.hint) from exc
    try:
        filters = plan.filters()
    except ConfigError as exc:
        raise ConfigError(
            f"pipeline {path.name}: {exc.message}", hint=exc.hint, **exc.context
        ) from exc
    try:
        rules = check_rules(section.fail_on)
    except ConfigError as exc:
        message = exc.message.replace("unknown --fail-on rule", "unknown rule")
        raise _fail(path, "from_records.fail_on", message, exc.hint) from exc
    if filters.until <= filters.since:
        raise _fail(path, "from_records.until", "the window is empty: until is not after since")
    return RecordsPlan(**{**plan.__dict__, "fail_on": tuple(rules)})


def _finetune(
    path: Path, section: FinetuneSection, out: Path
) -> tuple[FinetuneConfig, Path | None]:
    """The finetune config (file, then overrides), training on ``out``."""
    root = path.resolve().parent
    values: Any = {}
    source = None
    if section.config is not None:
        source = _under(root, section.config)
        values, _ = _read_yaml(source, "finetune.config")
        if not isinstance(values, Mapping):
            raise _fail(path, "finetune.config", f"{source} is not a YAML mapping of sections")
    elif not section.overrides:
        raise _fail(
            path,
            "finetune.config",
            "required: a finetune YAML (or the whole config inline under finetune.overrides)",
        )
    merged = _merge(values, section.overrides)
    if isinstance(merged.get("data", {}), Mapping):
        merged["data"] = {**merged.get("data", {}), "train": str(out)}
    try:
        config = parse_config(merged)
    except ConfigError as exc:
        field = f"finetune.{exc.context.get('field', 'config')}"
        where = f" (in {source.name} or finetune.overrides)" if source else ""
        raise ConfigError(
            f"pipeline {path.name}: {field}{where}: {exc.message}",
            hint=exc.hint,
            field=field,
        ) from exc
    return config.resolved(source.parent if source else root), source


def _rollout(path: Path, section: RolloutSection, endpoint: str) -> RolloutPlan:
    steps: str | list[int] = (
        section.steps if section.steps is not None else list(DEFAULT_POLICY.steps)
    )
    if section.strategy == "blue-green":
        if section.steps is not None and list(_steps(path, steps)) != [100]:
            raise _fail(
                path, "rollout.steps", "blue-green switches at once: leave steps out (or 100)"
            )
        steps = [100]
    try:
        bake = parse_duration(section.bake, field="rollout.bake", allow_zero=True)
        timeout = parse_duration(section.timeout, field="rollout.timeout")
        policy = check_policy(steps, bake.total_seconds(), section.min_requests, section.guards)
    except ConfigError as exc:
        field = str(exc.context.get("field", "rollout")).removeprefix("rollout.")
        field = "rollout." + {"guard": "guards"}.get(field, field)
        raise ConfigError(
            f"pipeline {path.name}: {field}: {exc.message}", hint=exc.hint, field=field
        ) from exc
    return RolloutPlan(
        endpoint=section.endpoint or endpoint,
        strategy=section.strategy,
        policy=policy,
        promote_alias=section.promote_alias,
        wait=section.wait,
        timeout_s=timeout.total_seconds(),
    )


def _steps(path: Path, steps: str | list[int]) -> tuple[int, ...]:
    try:
        return parse_steps(steps)
    except ConfigError as exc:
        raise _fail(path, "rollout.steps", exc.message) from exc


def _data_format(path: Path, section: FromRecordsSection, config_format: str | None) -> str:
    if section.format is None:
        return config_format or "alpaca"
    try:
        get_format(section.format)
    except ConfigError as exc:
        raise _fail(path, "from_records.format", exc.message, exc.hint) from exc
    if config_format is not None and section.format != config_format:
        raise _fail(
            path,
            "from_records.format",
            f"{section.format!r} differs from the fine-tune's data.format {config_format!r}",
            "The rows are written in the format the fine-tune reads: give one format.",
        )
    return section.format


def parse_pipeline(values: Any, path: Path, digest: str = "") -> Pipeline:
    """Check a pipeline mapping read from ``path`` (one ``ConfigError`` naming the field)."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"pipeline {path.name}: expected a mapping with from_records, finetune and rollout",
            hint="Start from the example in docs/closing-the-loop.md.",
            field="pipeline",
        )
    try:
        spec = PipelineFile.model_validate(values)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    root = path.resolve().parent
    out = _under(root, spec.from_records.out)
    config, source = _finetune(path, spec.finetune, out)
    data_format = _data_format(path, spec.from_records, config.data.format)
    records = _records(path, spec.from_records, data_format)
    rollout = None
    if spec.rollout is not None:
        rollout = _rollout(path, spec.rollout, spec.from_records.endpoint)
        _check_handover(path, config)
    return Pipeline(
        name=spec.name or path.stem,
        path=path.resolve(),
        digest=digest,
        records=records,
        finetune=config,
        finetune_source=source,
        rollout=rollout,
    )


def _check_handover(path: Path, config: FinetuneConfig) -> None:
    """A version reaches traffic through the rollout: gated, and no alias moved before it."""
    if not config.evaluation.gates:
        raise _fail(
            path,
            "finetune.evaluation.gates",
            "empty: a rollout needs a version whose gates passed",
            'Add gates such as "not_worse_than: champion" to the finetune config.',
        )
    if config.registry.alias_on_pass:
        raise _fail(
            path,
            "finetune.registry.alias_on_pass",
            f"moves {config.registry.alias_on_pass!r} at once, before the rollout judged the "
            "version",
            "Set it to null in finetune.overrides and name the alias as rollout.promote_alias.",
        )


def load_pipeline(path: Path) -> Pipeline:
    """Read and check a pipeline file (see the module's docstring)."""
    values, raw = _read_yaml(path, "pipeline")
    return parse_pipeline(values, path, hashlib.sha256(raw).hexdigest())
