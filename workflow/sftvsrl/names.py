"""Names the workflow, the package and the report share: splits, runs, figures. Defined here only.

The Snakemake rules (`workflow/rules/common.smk`) import them, so a path pattern, a wildcard
constraint and the report's reading of a run name cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

# Dataset splits of the text tasks, in file order: SFT rows, RL prompts, in-distribution and
# rule-OOD evaluation.
EVAL_ID = "eval_id"
EVAL_OOD_RULE = "eval_ood_rule"
TEXT_SPLITS = ("sft", "rl", EVAL_ID, EVAL_OOD_RULE)
# The image tasks add visual-OOD evaluation: the ID rule, drawn in a look training never showed
# (GP-VL: red suits instead of black).
EVAL_OOD_VISUAL = "eval_ood_visual"
VL_SPLITS = (*TEXT_SPLITS, EVAL_OOD_VISUAL)

# Runs: the checkpoints of one training run share its name; evaluations and the report key on it.
BASE_RUN = "base"  # the base model itself
INIT_RUN = "init"  # the SFT warm-up every SFT and RL run starts from
SFT_RUN = "sft"  # continued SFT from init
# Continued SFT from init on expert answers under varied face-card rules (arXiv 2510.00237); its rows are the
# task's `sft_varied` split, made only when the task's config asks for it (GP-L: gp.sizes.sft_varied)
SFT_VARIED_RUN = "sft-varied"
SFT_VARIED = "sft_varied"
RL_RUN = "rl-v{viter}"  # GRPO from init with VIter scored attempts per episode
NOSFT_RUN = "rl-nosft"  # GRPO from the base model
# GRPO from a checkpoint of the SFT arm (rl.starts: "sft-<step>"; arXiv 2509.12235)
RL_FROM_SFT_RUN = "rl-v{viter}-sft{step}"
# What an RL run started from, as `rl.starts` and the ledger (`ComputeLedger.train_start`) name it
START_INIT = "init"
START_BASE = "base"
SFT_START = "sft-{step}"

# The report's figures: results/figures/<name>.png, captioned by workflow/report/<name>.rst.
FIGURES = (
    "id_ood_vs_compute",
    "success_vs_step",
    "ood_change",
    "viter_ablation",
    "rl_nosft",
    "recognition_vs_compute",
    "rl_from_sft",
)


def rl_run(viter: int | str) -> str:
    """The run name of RL from init at `viter` (a number, or a regex for a wildcard constraint)."""
    return RL_RUN.format(viter=viter)


def rl_from_sft_run(viter: int | str, step: int | str) -> str:
    """The run name of RL at `viter` from the SFT arm's checkpoint at `step` (numbers, or regexes)."""
    return RL_FROM_SFT_RUN.format(viter=viter, step=step)


def sft_start_step(start: object) -> int | None:
    """The SFT step of a start named "sft-<step>"; None for init, base or nothing recorded (None, NaN)."""
    prefix = SFT_START.format(step="")
    return int(start[len(prefix) :]) if isinstance(start, str) and start.startswith(prefix) else None


def episodes_file(out_file: str | Path) -> Path:
    """An evaluation's episode table, beside its metrics: `.../eval_id.json` -> `.../eval_id.episodes.jsonl`."""
    out_file = Path(out_file)
    return out_file.with_name(out_file.name.removesuffix(".json") + ".episodes.jsonl")


# Compute, counted two ways (compute.ComputeLedger keeps both; report.compute_accounting picks one).
ACCOUNTINGS = {
    "paper": "the paper's accounting: 6·N·D over every played episode's tokens, 2·N·D over sampled ones",
    "computed": "as computed: 6·N·D over the tokens the update pass read, 2·N·D over sampled ones",
}


def gflops_of(compute: dict, accounting: str) -> float:
    """The GFLOPs a `compute.json` (or an eval JSON's `compute`) records under `accounting`; a ledger from
    before the two accountings has one figure (what was read), given for both."""
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown compute accounting {accounting!r}; one of {', '.join(ACCOUNTINGS)}")
    paper = compute.get("gflops")
    if paper is None:
        paper = float(compute.get("flops", 0.0) or 0.0) / 1e9
    return float(paper if accounting == "paper" else compute.get("computed_gflops", paper))
