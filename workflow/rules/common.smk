import json
import sys
from pathlib import Path

# The package lives beside the rules; importing it from the source tree lets `snakemake -n`
# work even before `pip install -e .` (jobs still call the installed `sftvsrl` command).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from sftvsrl.config import ConfigError, validate_config  # noqa: E402
from sftvsrl.tasks import task_section  # noqa: E402

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

ENV = "../../envs/sftvsrl{}.yaml".format("-gpu" if config.get("resources", {}).get("conda_env") == "gpu" else "")
TASKS = config["tasks"]
SEEDS = config["seeds"]
SPLITS = ["sft", "rl", "eval_id", "eval_ood_rule"]
BASE_MODEL = f"models/base/{config['model']['name']}"
STUDY_MARKER = "results/mlflow_study.json"
DATA_VERSION = "results/data_version.json"
PAPER_RESULTS = "config/paper_results.yaml"


def launch(wildcards, resources):
    """Training command for the job's GPUs: plain on CPU or one GPU, else `accelerate launch`
    with one process per GPU (config resources.accelerate_config picks DDP or DeepSpeed)."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus <= 1:
        return "sftvsrl"
    accel = config.get("resources", {}).get("accelerate_config")
    accel = f" --config_file {accel}" if accel else ""
    return f"accelerate launch{accel} --num_processes {gpus} -m sftvsrl.cli"


wildcard_constraints:
    task="|".join(TASKS),
    seed=r"\d+",
    split="|".join(SPLITS),
    run=r"base|init|sft|rl-v\d+|rl-nosft",
    step=r"\d+",
    viter=r"\d+",


def stage_config(*sections):
    """The config keys a stage reads, as JSON. It is a param, so changing those keys reruns
    the stage, and only those: adding a seed or a task leaves existing jobs alone."""
    keys = ("study", "mlflow") + sections
    return json.dumps({k: config[k] for k in keys if k in config}, sort_keys=True)


def task_config(task):
    return task_section(task)


def data_files(task):
    return expand("data/{task}/{split}.jsonl", task=task, split=SPLITS)


def all_data_files():
    return [f for task in TASKS for f in data_files(task)]


def rl_runs():
    runs = [f"rl-v{v}" for v in config["rl"]["viters"]]
    if config["rl"]["nosft"]:
        runs.append("rl-nosft")
    return runs


def run_steps(run):
    """Evaluated checkpoints of a run, by step within that run."""
    if run in ("base", "init"):
        return [0]
    if run == "sft":
        return config["sft"]["checkpoint_steps"]
    return config["rl"]["checkpoint_steps"]


def all_runs():
    """Evaluated runs; `base` only when eval.base (RL without SFT shows the base model's behaviour too)."""
    return (["base"] if config["eval"]["base"] else []) + ["init", "sft"] + rl_runs()


def model_dir(task, seed, run, step):
    if run == "base":
        return BASE_MODEL
    if run == "init":
        return f"results/{task}/seed{seed}/init/model"
    return f"results/{task}/seed{seed}/{run}/ckpt-{step}/model"


def eval_file(task, seed, run, step, split):
    return f"results/{task}/seed{seed}/eval/{run}/ckpt-{step}/{split}.json"


def all_eval_files():
    return [
        eval_file(task, seed, run, step, split)
        for task in TASKS
        for seed in SEEDS
        for run in all_runs()
        for step in run_steps(run)
        for split in config["eval"]["splits"]
    ]


def all_episode_files():
    """The episode table beside each eval JSON (`<split>.episodes.jsonl`): the paired statistics read them."""
    return [f[: -len(".json")] + ".episodes.jsonl" for f in all_eval_files()]


def rl_outputs(run):
    return [directory(f"results/{{task}}/seed{{seed}}/{run}/ckpt-{k}/model") for k in config["rl"]["checkpoint_steps"]]


def rl_save(output):
    return " ".join(f"{k}={d}" for k, d in zip(config["rl"]["checkpoint_steps"], output))


# Training jobs go first whenever cores are free: each takes every core, evaluations take one,
# and an evaluation started alone would leave the other core idle while training waits for it.
TRAIN_PRIORITY = 10


def threads_for(stage):
    """Torch threads: training takes the whole (small) machine, evaluations run two at a
    time. Snakemake caps threads at --cores; cluster profiles override with set-threads."""
    return 2 if stage == "train" else 1


def all_targets():
    return [
        DATA_VERSION,
        "results/summary.csv",
        "results/summary.md",
    ]
