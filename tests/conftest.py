"""Shared fixtures: a tiny offline causal LM, a temporary MLflow store, a shrunken config.

Nothing here touches the network. The tiny model is `sftvsrl.tiny_model` (the base model of the
test configs, `model.base: tiny-random`): a randomly initialised 2-layer Llama with a real
byte-level BPE tokenizer (trained on GeneralPoints text) and a ChatML chat template of the same
shape as SmolLM2's, so chat-templated prompts, completion-only loss and generation stop tokens
behave as with the real model. The configs are files under config/test/, merged over
config/config.yaml as Snakemake merges a `--configfile`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftvsrl.tiny_model import CARDS, build_tiny_model, gp_like_answer, gp_like_prompt

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "config" / "config.yaml"
TEST_CONFIGS = ROOT / "config" / "test"
UNIT_CONFIG = TEST_CONFIGS / "unit.yaml"


@contextlib.contextmanager
def cpu_time_under(seconds: float):
    """Fail when the block spends more than `seconds` of this process's CPU time.

    A guard against a hang or a quadratic parse, not a speed test: CPU time does not grow when
    another job shares the cores (wall time does), and callers set `seconds` at least 20x what
    the block takes on an idle machine. Speed itself is measured in benchmarks/.
    """
    start = time.process_time()
    yield
    spent = time.process_time() - start
    assert spent < seconds, f"took {spent:.2f} s of CPU time, bound {seconds} s"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`, nested mappings key by key (Snakemake's `--configfile` merge)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged_config(path: Path) -> dict[str, Any]:
    """A config file of config/test/ over config/config.yaml, as `snakemake --configfile` reads it (not validated)."""
    return merge(yaml.safe_load(CONFIG_FILE.read_text()), yaml.safe_load(Path(path).read_text()))


def dry_run_jobs(stdout: str) -> list[dict[str, Any]]:
    """The jobs of a `snakemake -n -p` run's output, each as {rule, input, output, resources, shell}."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\n]*\d{4}\]\n(?:local)?rule )", stdout):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if not rule:
            continue
        field = {k: re.search(rf"^\s+{k}: (.*)$", block, re.MULTILINE) for k in ("input", "output", "resources")}
        shell = re.search(r"^(?:Shell command: )?((?:accelerate|sftvsrl) .*)$", block, re.MULTILINE)
        jobs.append(
            {
                "rule": rule.group(1),
                "input": field["input"].group(1).split(", ") if field["input"] else [],
                "output": field["output"].group(1).split(", ") if field["output"] else [],
                "resources": field["resources"].group(1) if field["resources"] else "",
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


def hand_made_sft_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """Rows in the shape of the task's sft.jsonl (prompt chat list + completion message + metadata)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cards = [rng.choice(CARDS) for _ in range(4)]
        rows.append(
            {
                "id": f"hand-{i}",
                "prompt": [{"role": "user", "content": gp_like_prompt(cards)}],
                "completion": [{"role": "assistant", "content": gp_like_answer(cards, rng)}],
                "cards": cards,
                "rule": "id",
            }
        )
    return rows


def sft_rows(config: dict, n: int | None = None) -> list[dict]:
    """SFT rows of GP-L from the task module when it exists, else hand-made rows of the same shape."""
    try:
        from sftvsrl.tasks import get_task

        rows = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])["sft"]
    except (ImportError, ModuleNotFoundError, AttributeError, NotImplementedError):
        rows = hand_made_sft_rows(n or 32)
    return rows[:n] if n else rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random causal LM folder (model + ChatML tokenizer), built offline once per session.

    Treat it as read-only: tests that train write elsewhere.
    """
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow SQLite db (creating one takes seconds: do it once)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def mlflow_uri(tmp_path, _mlflow_template_db) -> str:
    """A fresh SQLite MLflow store for one test (a copy of an empty migrated db)."""
    import shutil

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_mlflow_template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def tiny_config(tmp_path, mlflow_uri, monkeypatch) -> dict:
    """config/test/unit.yaml over config/config.yaml, validated, logging to the temporary MLflow store."""
    from sftvsrl.study import load_config

    (tmp_path / "mlruns").mkdir(exist_ok=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(merged_config(UNIT_CONFIG))
    config["mlflow"]["tracking_uri"] = mlflow_uri
    return config
