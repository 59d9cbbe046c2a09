rule base_model:
    """The base model as a plain Hugging Face folder (embedded GGUF, tiny-random, hub id or local folder)."""
    output:
        directory(BASE_MODEL),
    log:
        f"logs/base_model/{config['model']['name']}.log",
    conda:
        ENV
    params:
        cfg=stage_config("model"),
    shell:
        "sftvsrl base-model --config {params.cfg:q} --out-dir {output} > {log} 2>&1"
