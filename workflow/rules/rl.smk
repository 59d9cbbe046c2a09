rule rl:
    """GRPO from the SFT init with VIter scored attempts per episode (the RL arm, one per VIter)."""
    input:
        data=data_file("rl"),
        start=model_dir(INIT_RUN),
    output:
        train_outputs(RL_RUN),
    log:
        run_log(RL_RUN),
    priority: TRAIN_PRIORITY
    conda:
        ENV
    threads: threads_for("train")
    params:
        launch=launch,
        stage=lambda w: rl_stage(rl_run(w.viter), w.viter),
        cfg=lambda w: stage_config("model", "rl", task_section(w.task)),
        save=save_arg(RL_RUN),
        work=work_dir(RL_RUN),
    shell:
        TRAIN_SHELL


rule rl_nosft:
    """Ablation: GRPO straight from the base model, no SFT warm-up (VIter = rl.nosft_viter, else the
    largest of rl.viters)."""
    input:
        data=data_file("rl"),
        start=BASE_MODEL,
        data_version=DATA_VERSION,
    output:
        train_outputs(NOSFT_RUN),
    log:
        run_log(NOSFT_RUN),
    priority: TRAIN_PRIORITY
    conda:
        ENV
    threads: threads_for("train")
    params:
        launch=launch,
        stage=rl_stage(NOSFT_RUN, NOSFT_VITER),
        cfg=lambda w: stage_config("model", "rl", task_section(w.task)),
        save=save_arg(NOSFT_RUN),
        work=work_dir(NOSFT_RUN),
    shell:
        TRAIN_SHELL
