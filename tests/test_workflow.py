"""The workflow as a whole: config validation, lint, the planned DAG, the test configs and their tiny model."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dry_run_jobs, merged_config
from sftvsrl.config import ConfigError
from sftvsrl.study import load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_default_config_is_valid():
    config = load_config(ROOT / "config" / "config.yaml")
    assert config["rl"]["viters"] == [1]  # the arm that trains on a CPU budget (docs/small-scale.md)
    assert config["eval"]["splits"] == ["eval_id", "eval_ood_rule"]
    # every run exports its last step, so the claims can read the end of each arm
    assert config["sft"]["checkpoint_steps"][-1] == config["sft"]["steps"]
    assert config["rl"]["checkpoint_steps"][-1] == config["rl"]["steps"]


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
        (
            {"num_cards": 2, "target": 24, "eval_overlaps_train": False},
            "gp.num_cards=2, gp.target=24",
        ),  # none held out
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
    nosft_steps = min(config["rl"]["nosft_steps"] or config["rl"]["steps"], config["rl"]["steps"])
    n_ckpts = (
        int(config["eval"]["base"])
        + 1
        + len(config["sft"]["checkpoint_steps"])
        + len(config["rl"]["viters"]) * len(config["rl"]["checkpoint_steps"])
        + len({s for s in config["rl"]["checkpoint_steps"] if s <= nosft_steps} | {nosft_steps})
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


TEST_CONFIGS = sorted((ROOT / "config" / "test").glob("*.yaml"))


@pytest.fixture(scope="module")
def gp_test_plan() -> list[dict]:
    """The jobs of config/test/gp_l.yaml's study, from a forced dry run."""
    result = snakemake("-n", "-p", "--forceall", "--configfile", "config/test/gp_l.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dry_run_jobs(result.stdout)


@pytest.mark.parametrize("path", TEST_CONFIGS, ids=lambda p: p.name)
def test_test_configs_pass_the_schema_over_the_default(path):
    config = load_config(merged_config(path))
    if path.stem in config["tasks"]:  # the test studies: one task each, a tiny offline model
        tiny = "tiny-random-vl" if path.stem in ("gp_vl", "virl_vl") else "tiny-random"
        assert config["tasks"] == [path.stem] and config["model"]["base"] == tiny


def test_every_output_is_handed_to_its_job_and_evaluate_gets_its_episode_tables(gp_test_plan):
    jobs = gp_test_plan
    evaluations = [j for j in jobs if j["rule"] == "evaluate"]
    # base, init, sft x 2, sft-varied x 2, rl-v1, rl-v2, rl-v1-sft1, rl-v2-sft1, rl-nosft
    assert len(evaluations) == 11
    extra = [j for j in jobs if j["rule"] == "evaluate_extra"]  # the same checkpoints on the harder OOD splits
    assert sorted(Path(j["output"][0]).parent for j in extra) == sorted(
        Path(j["output"][0]).parent for j in evaluations
    )
    for job in evaluations + extra:
        episodes = [f for f in job["output"] if f.endswith(".episodes.jsonl")]
        assert len(episodes) == (2 if job["rule"] == "evaluate" else 4)
        handed = re.search(r"--episodes-out (.*?) >", job["shell"]).group(1).split()
        assert handed == episodes
    evaluations += extra
    report = next(j for j in jobs if j["rule"] == "report")
    assert {f for j in evaluations for f in j["output"]} <= set(report["input"])
    handed_tables = re.search(r"--episodes (.*?) --paper", report["shell"]).group(1).split()
    assert handed_tables == [f for f in report["input"] if f.endswith(".episodes.jsonl")]
    for job in jobs:
        # the path itself, or the folder it is written into (--out-dir)
        if job["shell"]:
            missing = [f for f in job["output"] if f not in job["shell"] and str(Path(f).parent) not in job["shell"]]
            assert not missing, (job["rule"], missing)
    assert "--out-dir" not in report["shell"]  # the report writes exactly the files the rule declares


def test_training_rules_share_one_command(gp_test_plan):
    rules = ["rl", "rl_from_sft", "rl_nosft", "sft", "sft_init", "sft_varied"]
    training = [j for j in gp_test_plan if j["rule"] in rules]
    assert sorted({j["rule"] for j in training}) == rules
    shape = re.compile(
        r"sftvsrl (sft-init|sft|sft-varied|rl --run-name (rl-v\d+|rl-v\d+-sft\d+|rl-nosft) --viter \d+ "
        r"--start-name (init|base|sft-\d+)) --config '.*' --threads \d+ "
        r"--task gp_l --seed 0 --data data/gp_l/(sft|sft_varied|rl)\.jsonl --start \S+ --save (\d+=\S+ )+"
        r"--work-dir work/gp_l/seed0/\S+ > logs/gp_l/seed0/\S+\.log 2>&1"
    )
    for job in training:
        assert shape.fullmatch(job["shell"]), job["shell"]
        if job["rule"] == "rl_from_sft":  # it starts from the SFT checkpoint its name and --start-name give
            assert (
                "--start-name sft-1 " in job["shell"] and "--start results/gp_l/seed0/sft/ckpt-1/model" in job["shell"]
            )
        saved = re.search(r"--save (.*?) --work-dir", job["shell"]).group(1).split()
        assert [s.partition("=")[2] for s in saved] == job["output"]


def test_rl_without_sft_runs_its_own_steps(tmp_path):
    """rl.nosft_steps: the no-SFT arm trains that many steps and keeps the RL checkpoints up to it plus its last;
    the RL arms keep rl.steps. The job's config says the same, so the trainer stops where the outputs end."""
    override = tmp_path / "nosft.yaml"
    override.write_text("rl: {steps: 3, checkpoint_steps: [1, 3], save_every: 1, nosft_steps: 2}\n")
    result = snakemake("-n", "-p", "--forceall", "--configfile", "config/test/gp_l.yaml", str(override))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = dry_run_jobs(result.stdout)
    nosft = next(j for j in jobs if j["rule"] == "rl_nosft")
    assert [Path(o).parent.name for o in nosft["output"]] == ["ckpt-1", "ckpt-2"]
    cfg = json.loads(re.search(r"--config '(.*?)' --threads", nosft["shell"]).group(1))
    assert (cfg["rl"]["steps"], cfg["rl"]["checkpoint_steps"]) == (2, [1, 2])
    rl = next(j for j in jobs if j["rule"] == "rl" and "rl-v1 " in j["shell"])
    assert [Path(o).parent.name for o in rl["output"]] == ["ckpt-1", "ckpt-3"]
    assert json.loads(re.search(r"--config '(.*?)' --threads", rl["shell"]).group(1))["rl"]["steps"] == 3
    evaluated = {Path(o).parts[4:6] for j in jobs if j["rule"] == "evaluate" for o in j["output"]}  # run, ckpt
    assert {("rl-nosft", "ckpt-1"), ("rl-nosft", "ckpt-2"), ("rl-v1", "ckpt-3")} <= evaluated
    assert ("rl-nosft", "ckpt-3") not in evaluated
    # never past the RL arms: the test study's 1 RL step under the default's nosft_steps (4) gives one step
    result = snakemake("-n", "-p", "--forceall", "--configfile", "config/test/gp_l.yaml")
    nosft = next(j for j in dry_run_jobs(result.stdout) if j["rule"] == "rl_nosft")
    assert [Path(o).parent.name for o in nosft["output"]] == ["ckpt-1"]


def test_tiny_random_base_model_is_the_tests_tiny_model(tmp_path, tiny_model_dir):
    """`model.base: tiny-random` builds, offline, the same model the unit tests use, as a plain HF folder."""
    from sftvsrl.compute import COMPUTE_FILE
    from sftvsrl.models import BASE_INFO_FILE, load_model_and_tokenizer, materialise_base_model

    config = load_config(merged_config(ROOT / "config" / "test" / "gp_l.yaml"))
    out = materialise_base_model(config["model"], tmp_path / "models" / "base" / config["model"]["name"])
    assert json.loads((out / BASE_INFO_FILE).read_text())["base"] == "tiny-random"
    assert (out / COMPUTE_FILE).exists()
    model, tokenizer = load_model_and_tokenizer(out)
    _, expected = load_model_and_tokenizer(tiny_model_dir)
    assert tokenizer.get_vocab() == expected.get_vocab()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token != tokenizer.eos_token
    assert model.config.num_hidden_layers == 2 and model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2, 3, 4"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\n2, 3, 4<|im_end|>\n<|im_start|>assistant\n"


def test_evaluate_writes_its_episode_tables_where_the_rule_says(tmp_path, tiny_config, tiny_model_dir):
    """`sftvsrl evaluate --episodes-out` puts each split's episode table at the path given, in order."""
    from sftvsrl.cli import main
    from sftvsrl.tasks import get_task

    splits = get_task("gp_l").generate_splits(tiny_config["gp"], tiny_config["data_seed"])
    data = []
    for split in ("eval_id", "eval_ood_rule"):
        data.append(tmp_path / "data" / f"{split}.jsonl")
        data[-1].parent.mkdir(parents=True, exist_ok=True)
        data[-1].write_text("".join(json.dumps(r) + "\n" for r in splits[split][:2]))
    tiny_config["eval"].update(episodes=2, viter=1, max_new_tokens=4)
    out = [tmp_path / "metrics" / f"{p.stem}.json" for p in data]
    episodes = [tmp_path / "tables" / f"{p.stem}-episodes.jsonl" for p in data]
    args = ["--task", "gp_l", "--seed", "0", "--run-name", "base", "--step", "0", "--model", str(tiny_model_dir)]
    rc = main(
        ["evaluate", "--config", json.dumps(tiny_config), *args, "--data", *map(str, data), "--out", *map(str, out)]
        + ["--episodes-out", *map(str, episodes)]
    )
    assert rc == 0
    for metrics, table in zip(out, episodes):
        ids = [json.loads(line)["id"] for line in table.read_text().splitlines()]
        assert ids == json.loads(metrics.read_text())["row_ids"]
    assert not list((tmp_path / "metrics").glob("*.episodes.jsonl"))  # nothing beside the metrics
