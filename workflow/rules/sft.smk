rule sft_init:
    """SFT warm-up on expert answers: the shared "init" of every SFT and RL run."""
    input:
        data="data/{task}/sft.jsonl",
        base=BASE_MODEL,
        data_version=DATA_VERSION,
    output:
        directory("results/{task}/seed{seed}/init/model"),
    params:
        launch=launch,
        cfg=lambda w: stage_config("model", "sft", task_config(w.task)),
        save=lambda w, output: f"{config['sft']['init_steps']}={output[0]}",
        work="work/{task}/seed{seed}/init",
    threads: threads_for("train")
    priority: TRAIN_PRIORITY
    log:
        "logs/{task}/seed{seed}/sft_init.log",
    conda:
        ENV
    shell:
        "{params.launch} sft-init --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --data {input.data} --start {input.base} "
        "--save {params.save} --work-dir {params.work} > {log} 2>&1"


rule sft:
    """More SFT from init, with checkpoints at the configured steps (the SFT arm)."""
    input:
        data="data/{task}/sft.jsonl",
        init="results/{task}/seed{seed}/init/model",
    output:
        [directory(f"results/{{task}}/seed{{seed}}/sft/ckpt-{k}/model") for k in config["sft"]["checkpoint_steps"]],
    params:
        launch=launch,
        cfg=lambda w: stage_config("model", "sft", task_config(w.task)),
        save=lambda w, output: " ".join(f"{k}={d}" for k, d in zip(config["sft"]["checkpoint_steps"], output)),
        work="work/{task}/seed{seed}/sft",
    threads: threads_for("train")
    priority: TRAIN_PRIORITY
    log:
        "logs/{task}/seed{seed}/sft.log",
    conda:
        ENV
    shell:
        "{params.launch} sft --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --data {input.data} --start {input.init} "
        "--save {params.save} --work-dir {params.work} > {log} 2>&1"
