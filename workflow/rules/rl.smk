rule rl:
    """GRPO from the SFT init with VIter scored attempts per episode (the RL arm, one per VIter)."""
    input:
        data="data/{task}/rl.jsonl",
        init="results/{task}/seed{seed}/init/model",
    output:
        rl_outputs("rl-v{viter}"),
    params:
        launch=launch,
        cfg=lambda w: stage_config("model", "rl", task_config(w.task)),
        save=lambda w, output: rl_save(output),
        work="work/{task}/seed{seed}/rl-v{viter}",
    threads: threads_for("train")
    priority: TRAIN_PRIORITY
    log:
        "logs/{task}/seed{seed}/rl-v{viter}.log",
    conda:
        ENV
    shell:
        "{params.launch} rl --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --viter {wildcards.viter} "
        "--run-name rl-v{wildcards.viter} --data {input.data} --start {input.init} "
        "--save {params.save} --work-dir {params.work} > {log} 2>&1"


rule rl_nosft:
    """Ablation: GRPO straight from the base model, no SFT warm-up (VIter = rl.nosft_viter, else the
    largest of rl.viters)."""
    input:
        data="data/{task}/rl.jsonl",
        base=BASE_MODEL,
        data_version=DATA_VERSION,
    output:
        rl_outputs("rl-nosft"),
    params:
        launch=launch,
        cfg=lambda w: stage_config("model", "rl", task_config(w.task)),
        save=lambda w, output: rl_save(output),
        viter=config["rl"]["nosft_viter"] or max(config["rl"]["viters"]),
        work="work/{task}/seed{seed}/rl-nosft",
    threads: threads_for("train")
    priority: TRAIN_PRIORITY
    log:
        "logs/{task}/seed{seed}/rl-nosft.log",
    conda:
        ENV
    shell:
        "{params.launch} rl --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --viter {params.viter} "
        "--run-name rl-nosft --data {input.data} --start {input.base} "
        "--save {params.save} --work-dir {params.work} > {log} 2>&1"
