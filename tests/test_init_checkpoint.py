"""`model.init`: a study that starts SFT and RL from a given SFT-initialised checkpoint (the paper's
released ones) instead of training its warm-up: config checks, the planned DAG, the rule that makes
`init/model` from that checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dry_run_jobs, merge, merged_config
from sftvsrl.config import ConfigError
from sftvsrl.study import load_config

ROOT = Path(__file__).resolve().parents[1]
GP_L = ROOT / "config" / "test" / "gp_l.yaml"
VIRL_L = ROOT / "config" / "test" / "virl_l.yaml"


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # the jobs call the `sftvsrl` of this interpreter; MLflow stays the study's own
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def with_init(init) -> dict:
    config = merged_config(GP_L)
    config["model"]["init"] = init
    return config


# ---------------------------------------------------------------- (a) bad input stops, naming model.init
@pytest.mark.parametrize(
    "files, expected",
    [
        ({"config.json": "{}"}, "holds no weights"),
        ({"model.safetensors": ""}, "has no config.json"),
    ],
    ids=["no-weights", "no-config"],
)
def test_a_local_folder_that_is_no_model_is_rejected(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(with_init(str(tmp_path)))
    assert "config key model.init:" in str(err.value)
    with pytest.raises(ConfigError, match=expected) as err:  # per task: the entry's key
        load_config(with_init({"gp_l": str(tmp_path)}))
    assert "config key model.init.gp_l:" in str(err.value)


@pytest.mark.parametrize(
    "init, expected",
    [
        ({"virl_l": "org/name"}, r"model.init: names virl_l, not in tasks \(gp_l\)"),  # a task of another study
        ({"gp_x": "org/name"}, "unknown config key model.init.gp_x"),  # no such task (the schema)
        ("/no/such/folder", "config key model.init: '/no/such/folder' is neither a local folder nor a hub id"),
        ("", "config key model.init"),
    ],
)
def test_init_naming_no_task_of_the_study_or_nothing_loadable_is_rejected(init, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(with_init(init))


def test_hub_ids_and_model_folders_pass(tiny_model_dir):
    assert load_config(with_init("tianzhechu/GP-L-Init"))["model"]["init"] == "tianzhechu/GP-L-Init"
    assert load_config(with_init({"gp_l": str(tiny_model_dir)}))["model"]["init"] == {"gp_l": str(tiny_model_dir)}
    assert load_config(merged_config(GP_L))["model"]["init"] is None  # default: the study trains its warm-up


def test_a_bad_init_stops_snakemake_before_any_job(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    overlay = tmp_path / "init.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"init": str(tmp_path / "ckpt")}}))
    result = snakemake("-n", "--configfile", str(GP_L), str(overlay))
    assert result.returncode != 0
    assert "config key model.init:" in result.stdout + result.stderr
    assert "Job stats" not in result.stdout


# ---------------------------------------------------------------- (b) the plan
def test_a_task_with_an_init_plans_no_warm_up_and_starts_sft_and_rl_from_its_checkpoint(tmp_path, tiny_model_dir):
    """GP-L from a checkpoint, V-IRL-L (not named) with its own warm-up, in one study."""
    study = merge(merge(merged_config(GP_L), yaml.safe_load(VIRL_L.read_text())), {"tasks": ["gp_l", "virl_l"]})
    study["model"]["init"] = {"gp_l": str(tiny_model_dir)}
    load_config(study)
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "-p", "--forceall", "--configfile", str(cfg))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = dry_run_jobs(result.stdout)
    init = "results/gp_l/seed0/init/model"

    def of(rule, task):
        return [j for j in jobs if j["rule"] == rule and any(f"/{task}/" in f for f in j["output"])]

    assert not of("sft_init", "gp_l")
    made = of("init_from_checkpoint", "gp_l")
    assert [j["output"] for j in made] == [[init]]
    assert made[0]["shell"].startswith("sftvsrl init-model --config ")
    assert f"--task gp_l --out-dir {init} > logs/gp_l/seed0/init-from-checkpoint.log" in made[0]["shell"]
    assert json.loads(made[0]["shell"].split("'")[1])["model"]["init"] == str(tiny_model_dir)
    for rule in ("sft", "sft_varied", "rl"):
        assert of(rule, "gp_l") and all(init in j["input"] for j in of(rule, "gp_l")), rule
    evaluations = of("evaluate", "gp_l")
    assert any(init in j["input"] and "/eval/init/ckpt-0/" in j["output"][0] for j in evaluations)
    # base, init, sft x 2, sft-varied x 2, rl-v1, rl-v2, rl-v1-sft1, rl-v2-sft1, rl-nosft
    assert len(evaluations) == 11
    assert of("rl_nosft", "gp_l") and [j["rule"] for j in jobs].count("base_model") == 1
    # the other task keeps its warm-up, and its jobs' config does not hold model.init (setting it reruns none of them)
    assert len(of("sft_init", "virl_l")) == 1 and not of("init_from_checkpoint", "virl_l")
    for job in of("sft_init", "virl_l") + of("sft", "virl_l") + of("rl", "virl_l"):
        assert "init" not in json.loads(job["shell"].split("'")[1])["model"], job["rule"]


# ---------------------------------------------------------------- (c) the rule, run
def test_init_from_checkpoint_materialises_the_checkpoint_as_init_model(tmp_path, tiny_model_dir):
    from sftvsrl.compute import COMPUTE_FILE, ComputeLedger
    from sftvsrl.evaluate import model_compute
    from sftvsrl.models import BASE_INFO_FILE, UNCOUNTED_INIT_STAGE, load_model_and_tokenizer

    shutil.copytree(ROOT / "config", tmp_path / "config")
    overlay = tmp_path / "init.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"init": str(tiny_model_dir)}}))
    target = "results/gp_l/seed0/init/model"
    result = snakemake("--directory", str(tmp_path), "--configfile", str(GP_L), str(overlay), "--cores", "1", target)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "init_from_checkpoint" in result.stderr and "sft_init" not in result.stderr
    assert not (tmp_path / "models").exists()  # no base model needed for this

    out = tmp_path / target
    compute = json.loads((out / COMPUTE_FILE).read_text())
    assert compute["flops"] == 0 and compute["stages"] == {UNCOUNTED_INIT_STAGE: 0.0} and "unknown" in compute["note"]
    info = json.loads((out / BASE_INFO_FILE).read_text())
    assert info["init"] == str(tiny_model_dir) and "unknown" in info["note"]
    # evaluation puts this ledger into every eval JSON (the report's compute); SFT and RL add to it
    assert model_compute(out)["gflops"] == 0.0 and model_compute(out)["n_params"] == info["n_params"]
    ledger = ComputeLedger.load(out)
    ledger.add("sft", train_tokens=10)
    assert ledger.stages[UNCOUNTED_INIT_STAGE] == 0.0 and ledger.flops == 6 * info["n_params"] * 10

    model, tokenizer = load_model_and_tokenizer(out)
    source, expected = load_model_and_tokenizer(tiny_model_dir)
    assert tokenizer.get_vocab() == expected.get_vocab()
    for (name, p), (_, q) in zip(model.state_dict().items(), source.state_dict().items(), strict=True):
        assert p.equal(q), name
