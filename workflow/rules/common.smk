import json
import os
import sys
from pathlib import Path

# The package lives beside the rules; importing it from the source tree lets `snakemake -n`
# work even before `pip install -e .` (jobs still call the installed `sftvsrl` command).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from sftvsrl.config import ConfigError, init_checkpoint  # noqa: E402
from sftvsrl.study import validate_config  # noqa: E402
from sftvsrl.names import (
    BASE_RUN,
    EVAL_OOD_VISUAL,
    INIT_RUN,
    NOSFT_RUN,
    RL_FROM_SFT_RUN,
    RL_RUN,
    SFT_RUN,
    SFT_START,
    SFT_VARIED,
    SFT_VARIED_RUN,
    START_BASE,
    START_INIT,
    rl_from_sft_run,
    rl_run,
    sft_start_step,
)  # noqa: E402
from sftvsrl.report import study_figures  # noqa: E402
from sftvsrl.tasks import get_task, task_section  # noqa: E402
from sftvsrl.tasks.base import extra_splits as task_extra_splits  # noqa: E402

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

ENV = "../../envs/sftvsrl{}.yaml".format("-gpu" if config["resources"]["conda_env"] == "gpu" else "")
TASKS = config["tasks"]
TASK_SECTIONS = tuple(dict.fromkeys(task_section(t) for t in TASKS))  # the report titles each from its section
SEEDS = config["seeds"]


# ---------------------------------------------------------------- names, each defined once
# The task modules name their splits (`Task.splits`). Text tasks share one set, image tasks
# (GP-VL, V-IRL-VL) add visual-OOD evaluation; the data and evaluation rules have one form per
# set (`use rule ... with`), each constrained to its tasks.
IMAGE_TASKS = [task for task in TASKS if EVAL_OOD_VISUAL in get_task(task).splits]
TEXT_TASKS = [task for task in TASKS if task not in IMAGE_TASKS]


def _group_splits(tasks, splits_of=lambda task: get_task(task).splits):
    """The splits the tasks of one group share (empty for an empty group)."""
    splits = {tuple(splits_of(task)) for task in tasks}
    if len(splits) > 1:
        raise WorkflowError(f"tasks {tasks} must share their splits; got {sorted(splits)}")
    return list(splits.pop()) if splits else []


def extra_splits(task):
    """The splits the task's config section adds (GP-L: gp.varied_rules, gp.ood_splits)."""
    return list(task_extra_splits(get_task(task), config[task_section(task)]))


TEXT_SPLITS, IMAGE_SPLITS = _group_splits(TEXT_TASKS), _group_splits(IMAGE_TASKS)
# The extra splits have their own data and evaluation rules, for the tasks that have them (which must
# share them); `sft_varied` feeds the sft-varied arm, the `eval_*` ones are evaluated on every checkpoint.
EXTRA_TASKS = [task for task in TASKS if extra_splits(task)]
EXTRA_SPLITS = _group_splits(EXTRA_TASKS, extra_splits)
EXTRA_EVAL_SPLITS = [split for split in EXTRA_SPLITS if split.startswith("eval_")]
VARIED_TASKS = [task for task in TASKS if SFT_VARIED in extra_splits(task)]
SPLITS = list(dict.fromkeys(TEXT_SPLITS + IMAGE_SPLITS + EXTRA_SPLITS))


def task_splits(task):
    return (IMAGE_SPLITS if task in IMAGE_TASKS else TEXT_SPLITS) + extra_splits(task)


def eval_splits(task):
    """The configured eval splits (`eval.splits`) the task has (visual OOD only for image tasks), then
    its extra eval splits."""
    own = [split for split in config["eval"]["splits"] if split in task_splits(task)]
    return own + [split for split in extra_splits(task) if split in EXTRA_EVAL_SPLITS]


TEXT_EVAL_SPLITS = [split for split in config["eval"]["splits"] if split in TEXT_SPLITS]
IMAGE_EVAL_SPLITS = [split for split in config["eval"]["splits"] if split in IMAGE_SPLITS]


def task_group(tasks):
    """A `{task}` wildcard that matches only `tasks` (none: a pattern that matches nothing)."""
    return "{task," + ("|".join(tasks) or "(?!)") + "}"


# Tasks that start from a given checkpoint (`model.init`): their init model comes from
# `init_from_checkpoint`, constrained to them and ranked above the SFT warm-up (sft.smk).
INIT_TASKS = [task for task in TASKS if init_checkpoint(config, task)]


# Run names, the rl-v<V> pattern and the figures: sftvsrl.names (shared with the report).
NOSFT_VITER = config["rl"]["nosft_viter"] or max(config["rl"]["viters"])
# RL without SFT never trains past the RL arms: a config that shortens rl.steps shortens it too
NOSFT_STEPS = min(config["rl"]["nosft_steps"] or config["rl"]["steps"], config["rl"]["steps"])

# ---------------------------------------------------------------- paths
DATA_DIR = "data"
RESULTS = "results"
BASE_MODEL = f"models/base/{config['model']['name']}"
STUDY_MARKER = f"{RESULTS}/mlflow_study.json"
DATA_VERSION = f"{RESULTS}/data_version.json"
PAPER_RESULTS = "config/paper_results.yaml"
EVAL_FILE = {"metrics": "{split}.json", "episodes": "{split}.episodes.jsonl"}


def data_file(split, task="{task}"):
    return f"{DATA_DIR}/{task}/{split}.jsonl"


def seed_dir(task="{task}", seed="{seed}"):
    """Everything one training seed of a task produces (runs, evaluations)."""
    return f"{RESULTS}/{task}/seed{seed}"


def model_dir(run, step=0, task="{task}", seed="{seed}"):
    """A checkpoint's model folder; with the default task and seed, a pattern for rule outputs."""
    if run == BASE_RUN:
        return BASE_MODEL
    if run == INIT_RUN:
        return f"{seed_dir(task, seed)}/{INIT_RUN}/model"
    return f"{seed_dir(task, seed)}/{run}/ckpt-{step}/model"


def eval_files(kind, task="{task}", seed="{seed}", run="{run}", step="{step}", splits=None):
    """A checkpoint's evaluation, one file per eval split of the task (`splits`: as a rule pattern
    for a task group): kind `metrics` (JSON) or `episodes` (JSONL)."""
    folder = f"{seed_dir(task, seed)}/eval/{run}/ckpt-{step}"
    splits = eval_splits(task) if splits is None else splits
    return [f"{folder}/{EVAL_FILE[kind].format(split=split)}" for split in splits]


def work_dir(run):
    """Trainer checkpoints of a run (to resume): undeclared, so Snakemake never deletes them."""
    return f"work/{{task}}/seed{{seed}}/{run}"


def run_log(run):
    return f"logs/{{task}}/seed{{seed}}/{run}.log"


# ---------------------------------------------------------------- the study's runs and checkpoints
def rl_runs():
    """RL runs: per start of rl.starts (init, or a checkpoint of the SFT arm) and VIter; then RL without SFT."""
    runs = [
        rl_run(v) if start == START_INIT else rl_from_sft_run(v, sft_start_step(start))
        for start in config["rl"]["starts"]
        for v in config["rl"]["viters"]
    ]
    return runs + ([NOSFT_RUN] if config["rl"]["nosft"] else [])


def all_runs(task):
    """A task's evaluated runs; `base` only when eval.base (RL without SFT shows the base model's behaviour
    too), `sft-varied` when the task's config makes its data."""
    varied = [SFT_VARIED_RUN] if task in VARIED_TASKS else []
    sft = [SFT_RUN] if config["sft"]["arm"] else []
    return ([BASE_RUN] if config["eval"]["base"] else []) + [INIT_RUN] + sft + varied + rl_runs()


def train_steps(run):
    """The trainer steps whose models a training run exports (init: its last step, kept as `init/model`)."""
    if run == INIT_RUN:
        return [config["sft"]["init_steps"]]
    if run in (SFT_RUN, SFT_VARIED_RUN):
        return config["sft"]["checkpoint_steps"]
    if run == NOSFT_RUN and config["rl"]["nosft_steps"]:
        return sorted({s for s in config["rl"]["checkpoint_steps"] if s <= NOSFT_STEPS} | {NOSFT_STEPS})
    return config["rl"]["checkpoint_steps"]


def run_steps(run):
    """Evaluated checkpoints of a run, by step within that run (base and init: step 0)."""
    return [0] if run in (BASE_RUN, INIT_RUN) else train_steps(run)


def all_eval_files(kind="metrics"):
    return [
        f
        for task in TASKS
        for seed in SEEDS
        for run in all_runs(task)
        for step in run_steps(run)
        for f in eval_files(kind, task, seed, run, step)
    ]


def all_data_files():
    return [data_file(split, task) for task in TASKS for split in task_splits(task)]


wildcard_constraints:
    task="|".join(TASKS),
    seed=r"\d+",
    split="|".join(SPLITS),
    run="|".join(
        [BASE_RUN, INIT_RUN, SFT_RUN, SFT_VARIED_RUN, rl_run(r"\d+"), rl_from_sft_run(r"\d+", r"\d+"), NOSFT_RUN]
    ),
    step=r"\d+",
    viter=r"\d+",
    start=r"\d+",


# ---------------------------------------------------------------- jobs
def stage_config(*sections, extra=False):
    """The config keys a stage reads, as JSON. It is a param, so changing those keys reruns
    the stage, and only those: adding a seed or a task leaves existing jobs alone. `model.init`
    is left out: it picks the rule that makes a task's init model (`init_stage_config`), so
    setting it reruns that task's init and what starts from it, no other job. So are the keys of a
    task's section that shape only its extra splits (`Task.extra_keys`, e.g. gp.ood_splits) unless
    `extra`: adding a harder split to a study makes and evaluates that split, and reruns nothing else."""
    keys = ("study", "mlflow", "task_plugins") + sections  # task_plugins: only where a config sets it
    return json.dumps({k: _stage_section(k, extra) for k in keys if k in config}, sort_keys=True)


# config section -> its keys that only the extra splits read
EXTRA_KEYS = {task_section(task): getattr(get_task(task), "extra_keys", ()) for task in TASKS}


def _stage_section(key, extra=False):
    if key == "model":
        return {k: v for k, v in config[key].items() if k != "init"}
    if key in EXTRA_KEYS and not extra:
        return {k: v for k, v in config[key].items() if k not in EXTRA_KEYS[key]}
    return config[key]


def nosft_stage_config(task):
    """The config of RL without SFT: the RL arm's with its own steps and checkpoints (rl.nosft_steps)."""
    cfg = json.loads(stage_config("model", "rl", task_section(task)))
    cfg["rl"].update(steps=NOSFT_STEPS, checkpoint_steps=train_steps(NOSFT_RUN))
    return json.dumps(cfg, sort_keys=True)


def init_stage_config(task):
    """The config of `init_from_checkpoint` for one task: the model section with `model.init`
    narrowed to that task's checkpoint."""
    cfg = json.loads(stage_config("model"))
    cfg["model"]["init"] = init_checkpoint(config, task)
    return json.dumps(cfg, sort_keys=True)


def _check_local_gpus(gpus, accel):
    """Stop before any job when this machine cannot run a `gpus`-process training job."""
    import importlib.util

    import torch
    import yaml

    if config["model"]["rehearse_gpu"]:  # a CPU plays the GPUs: one process per core, joined over gloo
        found, kind = os.cpu_count() or 1, "CPU cores (model.rehearse_gpu)"
    else:
        found, kind = torch.cuda.device_count(), "GPUs"
    if gpus > found:
        raise WorkflowError(f"resource gpu={gpus} exceeds this machine's {found} {kind}")
    accel_config = yaml.safe_load(Path(accel).read_text()) if accel else {}
    if accel_config.get("distributed_type") == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise WorkflowError(
            f"config key resources.accelerate_config: {accel} uses DeepSpeed, which is not installed here "
            "(pip install -e '.[deepspeed]')"
        )


def launch(wildcards, resources):
    """Training command for the job's processes: plain for one, else `accelerate launch` with one
    process per GPU (`gpu` resource; config resources.accelerate_config picks DDP or DeepSpeed) or,
    on a CPU machine, `processes` processes joined over gloo (accelerate's multi-process launcher;
    the trainer runs them on the CPU). The job's threads are shared among its processes."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    processes = int(getattr(resources, "processes", 0) or 0)
    if gpus > 1:
        accel = config["resources"]["accelerate_config"]
        if accel and not Path(accel).exists() and (Path(workflow.basedir) / accel).exists():
            accel = str(Path(workflow.basedir) / accel)  # the workflow's own (workflow/accelerate/), run elsewhere
        if workflow.local_exec and not workflow.dryrun:  # the job runs here: check this machine
            _check_local_gpus(gpus, accel)
        accel = f" --config_file {accel}" if accel else ""
        return f"accelerate launch{accel} --num_processes {gpus} -m sftvsrl.cli"
    if processes > 1 and not gpus:
        cores = os.cpu_count() or 1
        if processes > cores:
            raise WorkflowError(f"resource processes={processes} exceeds this machine's {cores} CPU cores")
        return (
            f"accelerate launch --multi_gpu --num_processes {processes} --num_machines 1 "
            "--mixed_precision no --dynamo_backend no -m sftvsrl.cli"
        )
    return "sftvsrl"


# The four training rules (sft_init, sft, rl, rl_nosft) run this one command. Each hands over
# `params.stage` (the CLI stage, plus an RL run's name and VIter), its inputs `data` and `start`
# (the model it starts from), `params.save` (which trainer step goes to which output folder) and
# `params.work` (trainer checkpoints, to resume).
TRAIN_SHELL = (
    "{params.launch} {params.stage} --config {params.cfg:q} --threads {threads} "
    "--task {wildcards.task} --seed {wildcards.seed} --data {input.data} --start {input.start} "
    "--save {params.save} --work-dir {params.work} > {log} 2>&1"
)


def train_outputs(run):
    """The model folders a training run exports, one per step of `train_steps`."""
    return [directory(model_dir(run, step)) for step in train_steps(run)]


def save_arg(run):
    """`--save STEP=DIR ...` for a training job: its trainer steps paired with its output folders."""
    return lambda wildcards, output: " ".join(f"{k}={d}" for k, d in zip(train_steps(run), output))


def rl_stage(run, viter, start=START_INIT):
    return f"rl --run-name {run} --viter {viter} --start-name {start}"


# Training jobs go first whenever cores are free: each takes every core, evaluations take one,
# and an evaluation started alone would leave the other core idle while training waits for it.
TRAIN_PRIORITY = 10


# GPUs every training and evaluation job declares (Snakemake resource `gpu`): 0 on a CPU config; 1 on a
# one-GPU config, whose command caps the resource (--resources gpu=1) so GPU jobs run one at a time
# instead of several fine-tunings sharing one device. Cluster profiles set per-rule counts (set-resources).
GPUS_PER_JOB = config["resources"]["gpus_per_job"]


def threads_for(stage):
    """Torch threads: training takes the whole (small) machine, evaluations run two at a
    time. Snakemake caps threads at --cores; cluster profiles override with set-threads."""
    return 2 if stage == "train" else 1


def all_targets():
    return [DATA_VERSION, rules.report.output.csv, rules.report.output.md]
