rule evaluate:
    """One checkpoint on one split: the same hands and sampling seed for every checkpoint."""
    input:
        model=lambda w: model_dir(w.task, w.seed, w.run, w.step),
        data="data/{task}/{split}.jsonl",
        data_version=DATA_VERSION,
    output:
        metrics="results/{task}/seed{seed}/eval/{run}/ckpt-{step}/{split}.json",
        episodes="results/{task}/seed{seed}/eval/{run}/ckpt-{step}/{split}.episodes.jsonl",
    params:
        cfg=lambda w: stage_config("model", "eval", task_config(w.task)),
    threads: threads_for("eval")
    log:
        "logs/{task}/seed{seed}/eval/{run}-ckpt-{step}-{split}.log",
    conda:
        ENV
    shell:
        "sftvsrl evaluate --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --run-name {wildcards.run} "
        "--step {wildcards.step} --model {input.model} --data {input.data} "
        "--out {output.metrics} > {log} 2>&1"
