rule mlflow_study:
    """Create the study's MLflow parent run once; every job logs a child run under it."""
    output:
        STUDY_MARKER,
    params:
        cfg=stage_config(),
    log:
        "logs/mlflow_study.log",
    conda:
        ENV
    shell:
        "sftvsrl study-run --config {params.cfg:q} --out {output} > {log} 2>&1"


rule generate_data:
    """Every split of one task, deterministic in (config, data_seed)."""
    input:
        STUDY_MARKER,
    output:
        expand("data/{{task}}/{split}.jsonl", split=SPLITS),
    params:
        cfg=lambda w: stage_config("data_seed", task_config(w.task)),
    log:
        "logs/data/{task}.log",
    conda:
        ENV
    shell:
        "sftvsrl data --config {params.cfg:q} --task {wildcards.task} "
        "--out-dir data/{wildcards.task} > {log} 2>&1"


rule dvc_track:
    """Record data/ in data.dvc (DVC cache), push when dvc.remote is set. data.dvc is committed;
    regenerating from the same config reproduces its md5, which the marker records."""
    input:
        all_data_files(),
    output:
        DATA_VERSION,
    params:
        cfg=stage_config("dvc"),
    log:
        "logs/dvc_track.log",
    conda:
        ENV
    shell:
        "sftvsrl dvc-track --config {params.cfg:q} --data-dir data --out {output} > {log} 2>&1"
