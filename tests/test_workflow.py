"""The workflow as a whole: config validation, lint, and the planned DAG."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftvsrl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_default_config_is_valid():
    config = load_config(ROOT / "config" / "config.yaml")
    assert config["rl"]["viters"] == [1, 5]
    assert config["eval"]["splits"] == ["eval_id", "eval_ood_rule"]


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("sft", "lerning_rate"), 1e-5, "sft.lerning_rate"),
        (("rll",), {}, "rll"),
        (("rl", "viters"), "5", "rl.viters"),
        (("eval", "splits"), ["eval_ood_visual"], "eval.splits"),
        (("sft", "checkpoint_steps"), [10, 999], "sft.checkpoint_steps"),
    ],
)
def test_schema_rejects_bad_keys_naming_them(path, value, expected):
    config = copy.deepcopy(DEFAULT)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "gp, expected",
    [
        ({"num_cards": 2, "target": 24, "eval_overlaps_train": False}, "gp.num_cards=2, gp.target=24"),  # none held out
        ({"num_cards": 3, "target": 5000}, "gp.target=5000"),  # beyond every 3-card hand (13 * 13 * 13 = 2197)
    ],
)
def test_schema_rejects_a_task_setting_without_solvable_hands(gp, expected):
    config = copy.deepcopy(DEFAULT)
    config["gp"].update(gp)
    with pytest.raises(ConfigError, match="no solvable hand") as err:
        load_config(config)
    assert expected in str(err.value)


def test_eval_split_smaller_than_eval_episodes_is_rejected():
    config = copy.deepcopy(DEFAULT)
    config["eval"]["episodes"] = config["gp"]["sizes"]["eval_ood_rule"] + 1
    with pytest.raises(ConfigError, match=r"eval.episodes .* exceeds .*gp.sizes.eval_ood_rule"):
        load_config(config)
    config["eval"]["episodes"] = {"virl_l": 10}  # a per-task map must name every task of the study
    with pytest.raises(ConfigError, match="no number for task gp_l"):
        load_config(config)


def test_misspelt_key_stops_snakemake_before_any_job(tmp_path):
    bad = copy.deepcopy(DEFAULT)
    bad["eval"]["episdoes"] = 10
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    result = snakemake("-n", "--configfile", str(cfg))
    assert result.returncode != 0
    assert "eval.episdoes" in result.stdout + result.stderr
    assert "Job stats" not in result.stdout


def test_lint_passes():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_plans_the_whole_study():
    result = snakemake("-n", "--forceall", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    config = load_config(DEFAULT)
    n_ckpts = int(config["eval"]["base"]) + 1 + len(config["sft"]["checkpoint_steps"]) + (len(config["rl"]["viters"]) + 1) * len(
        config["rl"]["checkpoint_steps"]
    )
    expected = {
        "generate_data": len(config["tasks"]),
        "sft_init": len(config["tasks"]) * len(config["seeds"]),
        "rl": len(config["tasks"]) * len(config["seeds"]) * len(config["rl"]["viters"]),
        "rl_nosft": len(config["tasks"]) * len(config["seeds"]),
        "evaluate": len(config["tasks"]) * len(config["seeds"]) * n_ckpts,  # one job per checkpoint, every split
        "report": 1,
    }
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    for rule, n in expected.items():
        assert counts.get(rule) == n, (rule, counts)
