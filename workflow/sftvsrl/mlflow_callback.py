"""The trainers' MLflow callback: params and per-step metrics into the job's active run.

transformers' own MLflowCallback (added by `report_to=["mlflow"]`) logs in a background thread
whose failures vanish, and starts a run of its own when MLFLOW_NESTED_RUN / MLFLOW_RUN_ID are set.
This one uses only public APIs (`TrainerCallback` events, the `mlflow` module): it logs into the
run that `tracking.job_run` made active, synchronously, retrying while the store reports a lock.
It never starts or ends a run. `tracking.use_step_callback` swaps it in.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import mlflow
from transformers import TrainerCallback

from .tracking import retry

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value (3.x); longer values are dropped, as transformers does
PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_params call


def _metric_value(value: Any) -> float | None:
    """A number MLflow accepts as a metric (a Python number or a one-element tensor), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if getattr(value, "numel", None) is not None and value.numel() == 1:
        return float(value.item())
    return None


def trainer_params(args: Any, model: Any) -> dict[str, Any]:
    """The trainer's arguments over the model's config, without values too long for a param."""
    params = dict(model.config.to_dict()) if getattr(model, "config", None) is not None else {}
    params.update(args.to_dict())
    return {k: v for k, v in params.items() if len(str(v)) <= MAX_PARAM_CHARS}


class MlflowStepCallback(TrainerCallback):
    """Trainer arguments as params at the start of training, every `on_log` as metrics at the step."""

    def __init__(self) -> None:
        self._params_logged = False
        self._warned = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self._params_logged or not self._has_run():
            return
        items = list(trainer_params(args, model).items())
        for i in range(0, len(items), PARAMS_PER_CALL):
            retry(mlflow.log_params, dict(items[i : i + PARAMS_PER_CALL]))
        self._params_logged = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not self._has_run():
            return
        metrics = {}
        for key, value in logs.items():
            number = _metric_value(value)
            if number is not None:
                metrics[re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", key)] = number  # names MLflow accepts
        if metrics:
            retry(mlflow.log_metrics, metrics, step=state.global_step)

    def _has_run(self) -> bool:
        if mlflow.active_run() is not None:
            return True
        if not self._warned:
            log.warning(
                "no active MLflow run: trainer metrics are not logged (run the trainer inside tracking.job_run)"
            )
            self._warned = True
        return False
