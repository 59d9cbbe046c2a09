rule mlflow_study:
    """Create the study's MLflow parent run once; every job logs a child run under it."""
    output:
        STUDY_MARKER,
    log:
        "logs/mlflow_study.log",
    conda:
        ENV
    params:
        cfg=stage_config(),
    shell:
        "sftvsrl study-run --config {params.cfg:q} --out {output} > {log} 2>&1"


rule generate_data:
    """Every split of one task, deterministic in (config, data_seed)."""
    input:
        STUDY_MARKER,
    output:
        [data_file(split, task_group(TEXT_TASKS)) for split in TEXT_SPLITS],
    log:
        "logs/data/{task}.log",
    conda:
        ENV
    params:
        cfg=lambda w: stage_config("data_seed", task_section(w.task)),
        out_dir=lambda w, output: Path(output[0]).parent,
    shell:
        "sftvsrl data --config {params.cfg:q} --task {wildcards.task} --out-dir {params.out_dir} > {log} 2>&1"


use rule generate_data as generate_data_image with:
    output:
        [data_file(split, task_group(IMAGE_TASKS)) for split in IMAGE_SPLITS],


if EXTRA_TASKS:

    rule generate_extra_data:
        """The splits a task's config adds to its own (gp.varied_rules, gp.ood_splits), from the same
        generator and seed: each split has its own random stream, so its rows do not depend on the others."""
        input:
            STUDY_MARKER,
        output:
            [data_file(split, task_group(EXTRA_TASKS)) for split in EXTRA_SPLITS],
        log:
            "logs/data/{task}-extra.log",
        conda:
            ENV
        params:
            cfg=lambda w: stage_config("data_seed", task_section(w.task), extra=True),
            out_dir=lambda w, output: Path(output[0]).parent,
            splits=" ".join(EXTRA_SPLITS),
        shell:
            "sftvsrl data --config {params.cfg:q} --task {wildcards.task} --out-dir {params.out_dir} "
            "--splits {params.splits} > {log} 2>&1"


rule dvc_track:
    """Record data/ in data.dvc (DVC cache), push when dvc.remote is set. data.dvc is committed;
    regenerating from the same config reproduces its md5, which the marker records."""
    input:
        all_data_files(),
    output:
        DATA_VERSION,
    log:
        "logs/dvc_track.log",
    conda:
        ENV
    params:
        cfg=stage_config("dvc"),
        data_dir=lambda w, input: Path(input[0]).parents[1],  # data/<task>/<split>.jsonl
    shell:
        "sftvsrl dvc-track --config {params.cfg:q} --data-dir {params.data_dir} --out {output} > {log} 2>&1"
