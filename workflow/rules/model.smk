rule base_model:
    """The base model as a plain Hugging Face folder (embedded GGUF, hub id or local folder)."""
    output:
        directory(BASE_MODEL),
    params:
        cfg=stage_config("model"),
    log:
        f"logs/base_model/{config['model']['name']}.log",
    conda:
        ENV
    shell:
        "sftvsrl base-model --config {params.cfg:q} --out-dir {output} > {log} 2>&1"
