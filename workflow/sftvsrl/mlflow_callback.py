"""The trainers' MLflow callback: params and per-step metrics into the job's active run.

transformers' own MLflowCallback (what `report_to=["mlflow"]` adds) logs in a background thread
whose failures vanish, and starts a run of its own when MLFLOW_NESTED_RUN / MLFLOW_RUN_ID are set.
This one uses only public APIs (`TrainerCallback` events, the `mlflow` module): it logs into the
run that `tracking.job_run` made active, synchronously, retrying while the store reports a lock.
It never starts or ends a run. `use_step_callback` adds it to a trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import mlflow
from transformers import TrainerCallback

from .tracking import retry

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value (3.x); longer values are dropped, as transformers does
PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_params call
PROFILING_PREFIX = "profiling/"


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
    """The trainer's arguments that differ from their class's defaults, and the model's type: the run's
    params stay the recipe (the job's config is logged beside them; the model's config is its folder's
    config.json). Values too long for a param are left out."""
    params = {k: v for k, v in args.to_dict().items() if not _is_default(args, k, v)}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type:
        params["model_type"] = model_type
    return {k: v for k, v in params.items() if len(str(v)) <= MAX_PARAM_CHARS}


def _is_default(args: Any, name: str, value: Any) -> bool:
    if not dataclasses.is_dataclass(args):
        return False
    field = next((f for f in dataclasses.fields(args) if f.name == name), None)
    if field is None:
        return False
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return False
    return getattr(default, "value", default) == getattr(value, "value", value)


def pass_facts(model) -> dict[str, Any]:
    """How a training forward really runs, read inside it: the autocast dtype in force, whether the layers
    checkpoint activations, the weights' dtype and device (what a GPU run changes, whatever the config says)."""
    import torch

    weights = next(model.parameters())
    device = weights.device.type
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return {
        "pass.autocast": str(autocast).removeprefix("torch.") if autocast is not None else "off",
        "pass.activation_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),
        "pass.weights_dtype": str(weights.dtype).removeprefix("torch."),
        "pass.device": device,
        "pass.processes": torch.distributed.get_world_size() if distributed else 1,
    }


class MlflowStepCallback(TrainerCallback):
    """Trainer arguments as params at the start of training, how the first training forward ran (`pass_facts`),
    every `on_log` as metrics at the step (TRL's `profiling/` timers left out)."""

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
        if getattr(model, "get_input_embeddings", None) is not None:
            self._log_first_training_pass(model)

    def _log_first_training_pass(self, model) -> None:
        import torch

        def probe(module, args, kwargs):
            if model.training and torch.is_grad_enabled():  # not a rollout's or an evaluation's pass
                handle.remove()
                retry(mlflow.log_params, pass_facts(model))

        # on the input embeddings, inside the model's forward: accelerate enters autocast within it
        handle = model.get_input_embeddings().register_forward_pre_hook(probe, with_kwargs=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not self._has_run():
            return
        metrics = {}
        for key, value in logs.items():
            if key.startswith(PROFILING_PREFIX):  # TRL's internal timers; the stages log their own time/ split
                continue
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


def use_step_callback(trainer) -> None:
    """Ours in place of transformers' MLflowCallback. The trainers run with `report_to=[]`: with "mlflow"
    there, TRL's profiling timers would log straight into the run."""
    from transformers.integrations import MLflowCallback

    trainer.remove_callback(MLflowCallback)
    trainer.add_callback(MlflowStepCallback())
