rule sft_init:
    """SFT warm-up on expert answers: the shared "init" of every SFT and RL run."""
    input:
        data=data_file("sft"),
        start=BASE_MODEL,
        data_version=DATA_VERSION,
    output:
        train_outputs(INIT_RUN),
    log:
        run_log(INIT_RUN),
    priority: TRAIN_PRIORITY
    conda:
        ENV
    threads: threads_for("train")
    resources:
        gpu=GPUS_PER_JOB,
    params:
        launch=launch,
        stage="sft-init",
        cfg=lambda w: stage_config("model", "sft", task_section(w.task)),
        save=save_arg(INIT_RUN),
        work=work_dir(INIT_RUN),
    shell:
        TRAIN_SHELL


# A task that `model.init` gives a checkpoint (INIT_TASKS) starts from it: this rule makes its init
# model, so the warm-up never runs for it; other tasks match only sft_init.
ruleorder: init_from_checkpoint > sft_init


rule init_from_checkpoint:
    """The task's `model.init` checkpoint (hub id or local folder) as its init model, in place of the warm-up."""
    output:
        directory(model_dir(INIT_RUN, task=task_group(INIT_TASKS))),
    log:
        f"logs/{{task}}/seed{{seed}}/{INIT_RUN}-from-checkpoint.log",
    conda:
        ENV
    params:
        cfg=lambda w: init_stage_config(w.task),
    shell:
        "sftvsrl init-model --config {params.cfg:q} --task {wildcards.task} --out-dir {output} > {log} 2>&1"


rule sft:
    """More SFT from init, with checkpoints at the configured steps (the SFT arm)."""
    input:
        data=data_file("sft"),
        start=model_dir(INIT_RUN),
    output:
        train_outputs(SFT_RUN),
    log:
        run_log(SFT_RUN),
    priority: TRAIN_PRIORITY
    conda:
        ENV
    threads: threads_for("train")
    resources:
        gpu=GPUS_PER_JOB,
    params:
        launch=launch,
        stage="sft",
        cfg=lambda w: stage_config("model", "sft", task_section(w.task)),
        save=save_arg(SFT_RUN),
        work=work_dir(SFT_RUN),
    shell:
        TRAIN_SHELL


# SFT on varied face-card rules (gp.varied_rules; arXiv 2510.00237): the SFT arm's command, steps and
# settings on the task's sft_varied split, from the same init.
if VARIED_TASKS:

    use rule sft as sft_varied with:
        input:
            data=data_file(SFT_VARIED),
            start=model_dir(INIT_RUN),
        output:
            train_outputs(SFT_VARIED_RUN),
        log:
            run_log(SFT_VARIED_RUN),
        params:
            launch=launch,
            stage="sft-varied",
            cfg=lambda w: stage_config("model", "sft", task_section(w.task)),
            save=save_arg(SFT_VARIED_RUN),
            work=work_dir(SFT_VARIED_RUN),
