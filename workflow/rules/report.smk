rule report:
    """Summary table, figures (with the paper's numbers beside ours), paired claim statistics and a
    claim-by-claim verdict."""
    input:
        evals=all_eval_files("metrics"),
        episodes=all_eval_files("episodes"),
        paper=PAPER_RESULTS,
    output:
        csv=f"{RESULTS}/summary.csv",
        claims=f"{RESULTS}/claims.csv",
        md=report(f"{RESULTS}/summary.md", caption="../report/summary.rst", category="Summary"),
        verdicts=f"{RESULTS}/verdicts.csv",
        figures=[
            report(f"{RESULTS}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in study_figures(config)
        ],
    log:
        "logs/report.log",
    conda:
        ENV
    params:
        cfg=stage_config("tasks", *TASK_SECTIONS, "sft", "rl", "eval", "report"),
    shell:
        "sftvsrl report --config {params.cfg:q} --evals {input.evals} --episodes {input.episodes} "
        "--paper {input.paper} --summary-csv {output.csv} --claims-csv {output.claims} "
        "--summary-md {output.md} --verdicts-csv {output.verdicts} --figures {output.figures} > {log} 2>&1"
