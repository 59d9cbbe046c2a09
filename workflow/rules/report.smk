FIGURES = ["id_ood_vs_compute", "ood_change", "viter_ablation", "rl_nosft"]


rule report:
    """Summary table, figures (with the paper's numbers beside ours), paired claim statistics and a
    claim-by-claim verdict."""
    input:
        evals=all_eval_files(),
        episodes=all_episode_files(),
        paper=PAPER_RESULTS,
    output:
        csv="results/summary.csv",
        claims="results/claims.csv",
        md=report("results/summary.md", caption="../report/summary.rst", category="Summary"),
        figures=[
            report(f"results/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIGURES
        ],
    params:
        cfg=stage_config("tasks", "gp", "sft", "rl", "eval"),
    log:
        "logs/report.log",
    conda:
        ENV
    shell:
        "sftvsrl report --config {params.cfg:q} --evals {input.evals} --paper {input.paper} "
        "--out-dir results > {log} 2>&1"
