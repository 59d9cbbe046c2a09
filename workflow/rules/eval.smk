rule evaluate:
    """One checkpoint on every eval split: one model load and one batched rollout for all of
    them; the same hands and sampling seed for every checkpoint."""
    input:
        model=lambda w: model_dir(w.task, w.seed, w.run, w.step),
        data=expand("data/{{task}}/{split}.jsonl", split=config["eval"]["splits"]),
        data_version=DATA_VERSION,
    output:
        metrics=expand(
            "results/{{task}}/seed{{seed}}/eval/{{run}}/ckpt-{{step}}/{split}.json",
            split=config["eval"]["splits"],
        ),
        episodes=expand(
            "results/{{task}}/seed{{seed}}/eval/{{run}}/ckpt-{{step}}/{split}.episodes.jsonl",
            split=config["eval"]["splits"],
        ),
    params:
        cfg=lambda w: stage_config("model", "eval", task_config(w.task)),
    threads: threads_for("eval")
    log:
        "logs/{task}/seed{seed}/eval/{run}-ckpt-{step}.log",
    conda:
        ENV
    shell:
        "sftvsrl evaluate --config {params.cfg:q} --threads {threads} "
        "--task {wildcards.task} --seed {wildcards.seed} --run-name {wildcards.run} "
        "--step {wildcards.step} --model {input.model} --data {input.data} "
        "--out {output.metrics} > {log} 2>&1"
