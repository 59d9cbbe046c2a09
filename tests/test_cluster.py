"""Scale-out: the SLURM profile, the submission the SLURM plugin builds, accelerate launch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dry_run_jobs, merged_config
from sftvsrl.study import load_config

ROOT = Path(__file__).resolve().parents[1]
SLURM = ["--workflow-profile", "workflow/profiles/slurm"]


def dry_run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def parse_resources(text: str) -> dict:
    out = {}
    for item in text.split(", "):
        key, _, value = item.partition("=")
        out[key] = int(value) if value.isdigit() else value
    return out


@pytest.fixture(scope="module")
def paper_plan() -> list[dict[str, str]]:
    return dry_run_jobs(dry_run(*SLURM, "--configfile", "config/paper.yaml"))


# every study config in config/ (paper_results.yaml holds the paper's numbers, not a study), a new one included
STUDY_CONFIGS = sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "paper_results.yaml")


@pytest.mark.parametrize("name", STUDY_CONFIGS)
def test_shipped_configs_pass_the_schema(name):
    """Each as `snakemake --configfile config/<name>` reads it: over config/config.yaml (the Snakefile's)."""
    load_config(merged_config(ROOT / "config" / name))


def test_paper_config_is_the_papers_recipe():
    config = load_config(ROOT / "config" / "paper.yaml")
    assert config["model"]["base"] == "meta-llama/Llama-3.2-11B-Vision-Instruct"
    assert config["rl"]["viters"] == [1, 3, 5, 10]
    assert config["tasks"] == ["gp_l", "gp_vl", "virl_l", "virl_vl"]  # the paper's four tasks
    assert config["gp"]["sizes"]["eval_ood_rule"] == 234 and config["gp_vl"]["sizes"]["eval_ood_visual"] == 234
    assert config["eval"]["episodes"] == {"gp_l": 234, "gp_vl": 234, "virl_l": 48, "virl_vl": 48}
    assert config["rl"]["num_iterations"] == 1  # the paper's 4 epochs: not with TRL 1.16 and Llama-3.2-Vision
    assert len(config["seeds"]) == 3
    assert config["sft"]["learning_rate"] == 1e-6 and config["rl"]["epsilon"] == 0.1


def test_slurm_dry_run_plans_the_paper_study(paper_plan):
    rules = [j["rule"] for j in paper_plan]
    config = load_config(ROOT / "config" / "paper.yaml")
    n = len(config["tasks"]) * len(config["seeds"])
    assert rules.count("rl") == n * len(config["rl"]["viters"])
    assert rules.count("rl_nosft") == n and rules.count("sft_init") == n and rules.count("sft") == n
    ckpts = (
        2
        + len(config["sft"]["checkpoint_steps"])
        + (len(config["rl"]["viters"]) + 1) * len(config["rl"]["checkpoint_steps"])
    )
    # one job per checkpoint evaluates every split of its task: text tasks two, image tasks three
    assert rules.count("evaluate") + rules.count("evaluate_image") == n * ckpts
    assert rules.count("evaluate_image") == n * ckpts // 2
    visual = [j for j in paper_plan if any("eval_ood_visual" in f for f in j.get("output", []))]
    assert visual and {Path(j["output"][0]).parts[1] for j in visual} == {"gp_vl", "virl_vl"}


def test_rl_job_submission_asks_for_the_configured_gpus(paper_plan):
    """Build the sbatch call with the SLURM plugin's own code from the planned job's resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        name = "rl"
        threads = 8
        resources = Resources()

    rl = next(j for j in paper_plan if j["rule"] == "rl")
    Job.resources = Resources(parse_resources(rl["resources"]))
    params = {
        "run_uuid": "uuid",
        "slurm_logfile": "log",
        "comment_str": "rule_rl",
        "account": "-A 'proj'",
        "partition": "-p 'gpu'",
        "workdir": "/work",
    }
    call = get_submit_command(Job, params) + set_gres_string(Job)
    assert "--gpus=8" in call
    assert "--cpus-per-gpu=8" in call
    assert "--ntasks" not in call  # one launcher task spawns one process per GPU
    assert "-t 1440" in call and "--mem 480000" in call


def test_multi_gpu_training_launches_accelerate_with_one_process_per_gpu(paper_plan):
    rl = next(j for j in paper_plan if j["rule"] == "rl")
    assert rl["shell"].startswith(
        "accelerate launch --config_file workflow/accelerate/zero3.yaml --num_processes 8 -m sftvsrl.cli rl "
    )
    ev = next(j for j in paper_plan if j["rule"] == "evaluate")
    assert ev["shell"].startswith("sftvsrl evaluate ")


def test_gpu_count_follows_the_job_resources_and_cpu_runs_plainly():
    plan = dry_run_jobs(dry_run("--set-resources", "rl:gpu=4", "--cores", "2"))
    rl = [j for j in plan if j["rule"] == "rl"]
    assert rl and all("--num_processes 4 -m sftvsrl.cli rl " in j["shell"] for j in rl)
    sft = next(j for j in plan if j["rule"] == "sft")
    assert sft["shell"].startswith("sftvsrl sft ")


def test_processes_resource_launches_cpu_training_over_accelerate_and_is_checked():
    plan = dry_run_jobs(dry_run("--set-resources", "rl:processes=2", "sft_init:processes=2", "--cores", "2"))
    for rule in ("rl", "sft_init"):
        jobs = [j for j in plan if j["rule"] == rule]
        launched = "accelerate launch --multi_gpu --num_processes 2 --num_machines 1"
        assert jobs and all(j["shell"].startswith(launched) for j in jobs)
    assert next(j for j in plan if j["rule"] == "sft")["shell"].startswith("sftvsrl sft ")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--set-resources", f"rl:processes={(os.cpu_count() or 1) + 1}"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "resource processes=" in result.stdout + result.stderr
    assert "CPU cores" in result.stdout + result.stderr


def test_gpu_vl_config_plans_both_image_tasks_with_visual_ood():
    jobs = dry_run_jobs(dry_run("--configfile", "config/gpu-vl.yaml"))
    evaluations = [j for j in jobs if j["rule"] == "evaluate_image"]
    assert {Path(j["output"][0]).parts[1] for j in evaluations} == {"gp_vl", "virl_vl"}  # results/<task>/...
    for job in evaluations:
        outputs = [f for f in job["output"] if f.endswith(".json")]
        assert sorted(Path(f).stem for f in outputs) == ["eval_id", "eval_ood_rule", "eval_ood_visual"]
    assert {j["rule"] for j in jobs} >= {"generate_data_image", "sft_init", "sft", "rl", "rl_nosft", "report"}


def test_more_gpus_than_this_machine_has_stop_a_local_run_before_any_job(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--configfile", "config/test/gp_l.yaml", "--cores", "1", "--set-resources", "rl:gpu=64"]
    result = subprocess.run(command, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "resource gpu=64 exceeds this machine's" in result.stdout + result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()  # no job ran


def test_every_training_and_evaluation_rule_gets_gpus_and_threads_on_slurm():
    """A rule the profile forgets runs with the default resources (no GPU, one thread) on the cluster."""
    import re

    import yaml

    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", "config/followups.yaml"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    rules = {m.group(1) for m in re.finditer(r"^(\w+)", listed, re.MULTILINE)}
    heavy = {rule for rule in rules if rule.startswith(("sft", "rl", "evaluate"))}
    assert {"sft_varied", "rl_from_sft", "evaluate_extra"} <= heavy  # the follow-up conditions' rules are listed
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert heavy - set(profile["set-resources"]) == set()
    assert heavy - set(profile["set-threads"]) == set()
    assert all(profile["set-resources"][rule].get("gpu", 0) >= 1 for rule in heavy)


@pytest.mark.parametrize(
    "name, evaluated, seeds",
    [
        ("viter5.yaml", {"init": {0}, "sft": {91, 182}, "rl-v5": {8, 12, 16}, "rl-nosft": {4}}, {0}),
        ("rl-curve.yaml", {"init": {0}, "sft": {2}, "rl-v1": {4, 8, 12, 16, 20, 24}}, {0}),
        ("laptop.yaml", {"init": {0}, "sft": {72, 144}, "rl-v1": {8, 16}}, {0, 1, 2}),
        ("laptop-viter.yaml", {"init": {0}, "rl-v1": {4, 8, 12}, "rl-v5": {4, 8, 12}}, {0, 1, 2}),
    ],
)
def test_overlay_configs_plan_the_runs_their_docs_describe(name, evaluated, seeds):
    """An overlay merged over the default: a key it misspells or the schema ignores would plan other checkpoints;
    each seed evaluates every checkpoint."""
    jobs = dry_run_jobs(dry_run("--configfile", f"config/{name}"))
    planned: dict[int, dict[str, set[int]]] = {}
    for job in jobs:
        if job["rule"] == "evaluate":
            # results/<task>/seed<k>/eval/<run>/ckpt-<step>/...
            seed, _, run, ckpt = Path(job["output"][0]).parts[2:6]
            planned.setdefault(int(seed.removeprefix("seed")), {}).setdefault(run, set()).add(
                int(ckpt.removeprefix("ckpt-"))
            )
    assert planned == dict.fromkeys(seeds, evaluated)


GPU_RULES = ("sft_init", "sft", "sft_varied", "rl", "rl_from_sft", "rl_nosft", "evaluate", "evaluate_image")


def one_gpu_command() -> list[str]:
    """The README's command for one GPU (between its one-gpu-command markers), as arguments after `snakemake`."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- one-gpu-command -->\s*```bash\n(.*?)\n```", readme, re.DOTALL)
    assert block, "README.md lacks its one-gpu-command block"
    words = shlex.split(block.group(1))
    assert words[0] == "snakemake"
    return words[1:]


@pytest.mark.parametrize("profile", [False, True], ids=["readme-command", "gpu-profile"])
def test_the_one_gpu_command_never_runs_two_gpu_jobs_at_once(profile):
    """Every training and evaluation job of config/gpu.yaml declares gpu=1, and the command caps `gpu` at 1:
    Snakemake then never runs two of them together (four fine-tunings of a 1.5B model on one device)."""
    args = (
        ["--workflow-profile", "workflow/profiles/gpu", "--configfile", "config/gpu.yaml"]
        if profile
        else one_gpu_command()
    )
    if profile:
        cap = yaml_profile_resources()
    else:
        assert "--configfile" in args and "config/gpu.yaml" in args
        cap = args[args.index("--resources") + 1]
    assert cap == "gpu=1"
    jobs = dry_run_jobs(dry_run(*args))
    gpu_jobs = [j for j in jobs if j["rule"] in GPU_RULES]
    assert {j["rule"] for j in gpu_jobs} >= {"sft_init", "sft", "rl", "rl_nosft", "evaluate"}
    assert all(parse_resources(j["resources"]).get("gpu") == 1 for j in gpu_jobs)
    others = [j for j in jobs if j["rule"] not in GPU_RULES]
    assert all(parse_resources(j["resources"]).get("gpu", 0) == 0 for j in others)  # data, report: no GPU


def yaml_profile_resources() -> str:
    import yaml

    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "gpu" / "config.yaml").read_text())
    (cap,) = profile["resources"]
    return cap


def test_a_cpu_config_declares_no_gpu():
    jobs = dry_run_jobs(dry_run("--cores", "2"))
    assert all(parse_resources(j["resources"]).get("gpu", 0) == 0 for j in jobs)


@pytest.mark.parametrize("env", ["sftvsrl", "sftvsrl-gpu"])
def test_a_conda_env_installs_the_project_from_where_snakemake_runs(env, tmp_path):
    """--sdm conda copies an env file under .snakemake/conda/, so the file names no path of the project; its
    post-deploy script (Snakemake runs it from its working directory) installs it, and elsewhere it stops, saying
    where to run."""
    spec = yaml.safe_load((ROOT / "envs" / f"{env}.yaml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert not [p for p in pip if p.startswith(("-e", ".", "/"))]
    script = ROOT / "envs" / f"{env}.post-deploy.sh"
    done = subprocess.run(["bash", str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "run snakemake from the sftvsrl repository root" in done.stderr
