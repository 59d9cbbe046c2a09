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
    params:
        launch=launch,
        stage="sft-init",
        cfg=lambda w: stage_config("model", "sft", task_section(w.task)),
        save=save_arg(INIT_RUN),
        work=work_dir(INIT_RUN),
    shell:
        TRAIN_SHELL


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
    params:
        launch=launch,
        stage="sft",
        cfg=lambda w: stage_config("model", "sft", task_section(w.task)),
        save=save_arg(SFT_RUN),
        work=work_dir(SFT_RUN),
    shell:
        TRAIN_SHELL
