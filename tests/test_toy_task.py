"""A task defined only in the tests (tests/toy_task.py) runs the whole study: data, SFT, RL, evaluation and
the report, through the config key `task_plugins`, with no file of the package, the rules or the schema
naming it (issue 23: "a task is one module")."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftvsrl.config import ConfigError
from sftvsrl.report import build_report
from sftvsrl.study import load_config
from sftvsrl.tasks import register_task
from test_report import CHECKPOINTS, PAPER_FILE, write_eval

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PLUGIN = {"toy_l": "toy_task:ToySumTask"}


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def toy_config() -> dict:
    """The GP-L pipeline test's settings (tiny random model, a few steps) with the toy task instead."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    test = yaml.safe_load((ROOT / "config" / "test" / "gp_l.yaml").read_text())
    for key, value in test.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    config.update(study="test-toy_l", tasks=["toy_l"], task_plugins=dict(PLUGIN), toy={"max_number": 5})
    config["sft"]["max_length"] = 64
    return config


def test_a_plugin_task_validates_with_its_own_section_and_defaults():
    config = load_config(toy_config())
    assert config["toy"] == {"max_number": 5, "sizes": {"sft": 16, "rl": 8, "eval_id": 4, "eval_ood_rule": 4}}


def test_a_plugin_that_cannot_be_imported_stops_naming_the_key():
    config = toy_config()
    config["task_plugins"] = {"toy_l": "no_such_module:ToySumTask"}
    with pytest.raises(ConfigError, match=r"task_plugins\.toy_l"):
        load_config(config)


def test_a_plugin_section_key_is_checked_by_the_plugin_schema():
    config = toy_config()
    config["toy"]["max_numbr"] = 3
    with pytest.raises(ConfigError, match=r"unknown config key toy\.max_numbr"):
        load_config(config)


def test_without_the_plugin_the_task_is_unknown():
    config = toy_config()
    del config["task_plugins"], config["toy"]
    config["tasks"] = ["toy_x"]
    with pytest.raises(ConfigError, match="tasks"):
        load_config(config)


def test_nothing_outside_the_tests_names_the_toy_task():
    """The study below needs no edit of the package, the rules, the schema or the configs."""
    places = [ROOT / "Snakefile", *(ROOT / "workflow").rglob("*"), *(ROOT / "config").rglob("*")]
    places = [p for p in places if p.is_file() and not any(part.endswith(".egg-info") for part in p.parts)]
    names = ("toy_l", "toy_task", "ToySumTask", "Toy-L")
    named = [p for p in places if p.suffix != ".pyc" and any(n in p.read_text(errors="ignore") for n in names)]
    assert not named


def test_the_report_titles_the_toy_metrics_as_the_toy_task_does(tmp_path):
    """The report knows no metric of the toy's: the task titles its rule memorisation (`metric_titles`) and puts
    it in the rule-OOD diagnostics table (`diagnostic_columns`)."""
    register_task("toy_l", PLUGIN["toy_l"])
    files = []
    for run, step, gflops in CHECKPOINTS:
        for split in ("eval_id", "eval_ood_rule"):
            memorised = 0.3 if run == "sft" else 0.1  # SFT applies the training rule (the sum) more often
            path = write_eval(tmp_path / "results", "toy_l", 0, run, step, split, 0.5, gflops=gflops,
                              memorised=memorised, format_error_rate=0.05)  # fmt: skip
            files.append(str(path))
    config = {"study": "t", "tasks": ["toy_l"], "toy": {"max_number": 5}}
    md = build_report(config, files, tmp_path / "out", paper_file=PAPER_FILE, log_to_mlflow=False)["summary_md"]
    lines = md.read_text().splitlines()
    table = lines[lines.index("### Diagnostics on the rule-OOD split") + 4]
    assert table == "| run | step | GFLOPs | episode success [95% CI] | format error | sums given for products |"
    # the table's text reads the toy's declared diagnostic and its direction (-1: it falls as the score rises)
    text = lines[lines.index("### Diagnostics on the rule-OOD split") + 2]
    assert text.endswith("The task's rule-OOD diagnostics: sums given for products (falls as the score rises). "
                         "They can move before the score does.")  # fmt: skip
    assert any("SFT raises OOD sums given for products vs init" in line for line in lines)  # claim (ii)'s diagnostic


def test_the_toy_task_runs_the_whole_study(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(yaml.safe_dump(toy_config()))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    result = subprocess.run(
        [*command, "--configfile", str(config_file), "--cores", "2"],
        capture_output=True,
        text=True,
        timeout=3600,  # a hang guard only: a whole study on a slow or shared machine; CI stops at 90 min anyway
        env=env,
        check=False,
    )
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in (tmp_path / "logs").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{result.stderr[-3000:]}\n{logs[-6000:]}")
    rows = list(csv.DictReader((tmp_path / "results" / "summary.csv").open()))
    assert {r["task"] for r in rows} == {"toy_l"}
    assert {(r["run"], int(r["step"])) for r in rows} >= {("init", 0), ("sft", 2), ("rl-v1", 1), ("rl-nosft", 1)}
    assert {r["split"] for r in rows} == {"eval_id", "eval_ood_rule"}
    data = [yaml.safe_load(line) for line in (tmp_path / "data" / "toy_l" / "eval_ood_rule.jsonl").open()]
    assert {row["rule"] for row in data} == {"ood"}
    assert "Toy sums up to 5 (Toy-L)" in (tmp_path / "results" / "summary.md").read_text()
