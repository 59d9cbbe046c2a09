rule evaluate:
    """One checkpoint on every eval split: one model load and one batched rollout for all of
    them; the same hands and sampling seed for every checkpoint. Text tasks."""
    input:
        model=lambda w: model_dir(w.run, w.step, w.task, w.seed),
        data=[data_file(split) for split in TEXT_EVAL_SPLITS],
        data_version=DATA_VERSION,
    output:
        metrics=eval_files("metrics", task_group(TEXT_TASKS), splits=TEXT_EVAL_SPLITS),
        episodes=eval_files("episodes", task_group(TEXT_TASKS), splits=TEXT_EVAL_SPLITS),
    log:
        "logs/{task}/seed{seed}/eval/{run}-ckpt-{step}.log",
    conda:
        ENV
    threads: threads_for("eval")
    resources:
        gpu=GPUS_PER_JOB,
    params:
        cfg=lambda w: stage_config("model", "eval", task_section(w.task)),
    shell:
        "sftvsrl evaluate --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --run-name {wildcards.run} "
        "--step {wildcards.step} --model {input.model} --data {input.data} "
        "--out {output.metrics} --episodes-out {output.episodes} > {log} 2>&1"


use rule evaluate as evaluate_image with:
    input:
        model=lambda w: model_dir(w.run, w.step, w.task, w.seed),
        data=[data_file(split) for split in IMAGE_EVAL_SPLITS],
        data_version=DATA_VERSION,
    output:
        metrics=eval_files("metrics", task_group(IMAGE_TASKS), splits=IMAGE_EVAL_SPLITS),
        episodes=eval_files("episodes", task_group(IMAGE_TASKS), splits=IMAGE_EVAL_SPLITS),


# The harder OOD splits a task's config adds (gp.ood_splits): every checkpoint again, one job for all of
# them, so a study that adds them reruns none of its other evaluations.
if EXTRA_EVAL_SPLITS:

    use rule evaluate as evaluate_extra with:
        input:
            model=lambda w: model_dir(w.run, w.step, w.task, w.seed),
            data=[data_file(split) for split in EXTRA_EVAL_SPLITS],
            data_version=DATA_VERSION,
        output:
            metrics=eval_files("metrics", task_group(EXTRA_TASKS), splits=EXTRA_EVAL_SPLITS),
            episodes=eval_files("episodes", task_group(EXTRA_TASKS), splits=EXTRA_EVAL_SPLITS),
        log:
            "logs/{task}/seed{seed}/eval/{run}-ckpt-{step}-extra.log",
