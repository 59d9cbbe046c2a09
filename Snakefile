# sftvsrl: "SFT Memorizes, RL Generalizes" (Chu et al. 2025) as one workflow.
# The rule graph is the study: data -> base model -> SFT init -> {continued SFT, RL per VIter,
# RL without SFT} -> evaluation of every checkpoint on every split -> report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
