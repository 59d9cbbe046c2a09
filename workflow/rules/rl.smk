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
    resources:
        gpu=GPUS_PER_JOB,
    params:
        launch=launch,
        stage=lambda w: rl_stage(rl_run(w.viter), w.viter),
        cfg=lambda w: stage_config("model", "rl", task_section(w.task)),
        save=save_arg(RL_RUN),
        work=work_dir(RL_RUN),
    shell:
        TRAIN_SHELL


rule rl_from_sft:
    """GRPO from a checkpoint of the SFT arm (rl.starts: sft-<step>; arXiv 2509.12235: does RL restore
    what SFT lost?), one run per start and VIter, at the RL arm's settings."""
    input:
        data=data_file("rl"),
        start=model_dir(SFT_RUN, "{start}"),
    output:
        train_outputs(RL_FROM_SFT_RUN.format(viter="{viter}", step="{start}")),
    log:
        run_log(RL_FROM_SFT_RUN.format(viter="{viter}", step="{start}")),
    priority: TRAIN_PRIORITY
    conda:
        ENV
    threads: threads_for("train")
    resources:
        gpu=GPUS_PER_JOB,
    params:
        launch=launch,
        stage=lambda w: rl_stage(rl_from_sft_run(w.viter, w.start), w.viter, SFT_START.format(step=w.start)),
        cfg=lambda w: stage_config("model", "rl", task_section(w.task)),
        save=save_arg(RL_FROM_SFT_RUN),
        work=work_dir(RL_FROM_SFT_RUN.format(viter="{viter}", step="{start}")),
    shell:
        TRAIN_SHELL


rule rl_nosft:
    """Ablation: GRPO straight from the base model, no SFT warm-up (VIter = rl.nosft_viter, else the
    largest of rl.viters; rl.nosft_steps updates, else rl.steps)."""
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
    resources:
        gpu=GPUS_PER_JOB,
    params:
        launch=launch,
        stage=rl_stage(NOSFT_RUN, NOSFT_VITER, START_BASE),
        cfg=lambda w: nosft_stage_config(w.task),
        save=save_arg(NOSFT_RUN),
        work=work_dir(NOSFT_RUN),
    shell:
        TRAIN_SHELL
