"""Run tracking outside the store: MLflow, when a config sets ``tracking.mlflow_uri``.

The store always keeps the run (params, per-step history, environment, config);
MLflow gets the same so teams that already browse runs there keep doing so. The
``MlflowClient`` is used directly (no global "active run"), and only on the
main process of a distributed run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.errors import ConfigError

_MAX_PARAM = 6000  # MLflow's limit on a parameter value


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"training": {"seed": 0}}`` -> ``{"training.seed": "0"}`` (MLflow params are flat)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM]
    return flat


class MlflowTracker:
    """One MLflow run mirroring a modelyard run."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(
                "tracking.mlflow_uri is set but MLflow is not installed",
                hint="pip install 'modelyard[tracking]' (mlflow-skinny), or drop tracking.",
                field="tracking.mlflow_uri",
            ) from exc
        self._client = MlflowClient(tracking_uri=uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        run = self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id: str = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self._client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_step(self, entry: Mapping[str, float]) -> None:
        step = int(entry.get("step", 0))
        self.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=step)

    def finish(self, status: str) -> None:
        self._client.set_terminated(
            self.run_id, status="FINISHED" if status == "finished" else "FAILED"
        )
