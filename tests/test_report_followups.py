"""The report on the follow-ups of arXiv 2510.00237: SFT on varied rules (the sft-varied run, claims (ix) and
(x)) and a task's extra OOD splits (GP-L's harder ones), on constructed evaluation outputs."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from sftvsrl.names import SFT_VARIED_RUN
from sftvsrl.report import study_figures
from sftvsrl.report.results import run_label, run_order, split_title
from sftvsrl.stats import HELD, INCONCLUSIVE, NOT_HELD
from sftvsrl.tasks import get_task
from test_report import (
    AGREE,
    CHECKPOINTS,
    _assert_real_png,
    read_claims,
    report_of,
    study_files,
    write_eval,
)

EPISODES = 234
# (step, GFLOPs) of the sft-varied run: the SFT arm's steps and compute (CHECKPOINTS: sft 10 at 1.5, 20 at 3.0)
VARIED_STEPS = ((10, 1.5), (20, 3.0))
EXTRA_SPLITS = ("eval_ood_all12", "eval_ood_cards", "eval_ood_large", "eval_ood_fake")
MEMORISING_SPLITS = ("eval_ood_all12", "eval_ood_fake")  # where rule memorisation means the usual values were used


def varied_files(root: Path, ood: float, *, steps=VARIED_STEPS, splits=("eval_id", "eval_ood_rule")) -> list[str]:
    """Evaluations of the sft-varied run as the SFT job's would be: no train_viter, no train_start."""
    files = []
    for step, gflops in steps:
        for split in splits:
            p = 0.55 if split == "eval_id" else ood
            path = write_eval(root, "gp_l", 0, SFT_VARIED_RUN, step, split, p, episodes=EPISODES, gflops=gflops,
                              memorised=0.1, format_error_rate=0.05)  # fmt: skip
            files.append(str(path))
    return files


def extra_split_files(root: Path, scores: dict[str, float], runs=None) -> list[str]:
    """Every checkpoint (of CHECKPOINTS and `runs`: (run, step, gflops)) on every extra split;
    `scores[run]`: its success there (else 0.2)."""
    files = []
    for run, step, gflops in list(CHECKPOINTS) + list(runs or []):
        for split in EXTRA_SPLITS:
            extra = {"rule_memorisation_rate": 0.4 if run == "sft" else 0.1} if split in MEMORISING_SPLITS else {}
            path = write_eval(root, "gp_l", 0, run, step, split, scores.get(run, 0.2), episodes=EPISODES,
                              gflops=gflops, memorised=0.25, format_error_rate=0.05, **extra)  # fmt: skip
            files.append(str(path))
    return files


def by_claim(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(claim, metric) -> its first row in claims.csv."""
    return {(r["claim"], r["metric"]): r for r in reversed(read_claims(path))}


def table_rows(md: str, key: str) -> list[str]:
    """The rows of summary.md's claims table for claim `key`."""
    return [line for line in md.splitlines() if line.startswith(f"| ({key}) |")]


def section(md: str, title: str) -> str:
    return md.split(title, 1)[1].split("\n### ", 1)[0] if title in md else ""


# --------------------------------------------------------------------------- sft-varied: names
def test_sft_varied_sorts_after_sft_with_its_own_label():
    assert run_order("sft") < run_order(SFT_VARIED_RUN) < run_order("rl-v1", 1) < run_order("rl-nosft")
    assert run_label(SFT_VARIED_RUN) == "SFT on varied rules"


def test_sft_varied_trains_as_its_own_mlflow_stage():
    from sftvsrl.report.publish import TRAINING_STAGES

    assert TRAINING_STAGES[SFT_VARIED_RUN] == "sft-varied"


# --------------------------------------------------------------------------- claims (ix) and (x)
@pytest.mark.parametrize(
    "ood, ix, x",
    [
        (0.70, HELD, HELD),  # above SFT (5%) and above RL (50%)
        (0.40, HELD, NOT_HELD),  # above SFT, below RL
        (0.0, NOT_HELD, NOT_HELD),  # below both
        (0.52, HELD, INCONCLUSIVE),  # level with RL: "reaches" is not shown by an interval around 0
    ],
)
def test_varied_rule_sft_is_paired_with_sft_and_with_rl_on_rule_ood(tmp_path, ood, ix, x):
    files = study_files(tmp_path / "results", AGREE) + varied_files(tmp_path / "results", ood)
    out = report_of(tmp_path, files)
    by = by_claim(out["claims_csv"])
    assert by[("ix", "success_rate")]["verdict"] == ix
    assert by[("x", "success_rate")]["verdict"] == x
    # the SFT checkpoint the claims use (step 10, equal compute) and the main RL arm's (rl-v5 step 6)
    assert by[("ix", "success_rate")]["comparison"] == "SFT on varied rules step 10 - SFT step 10 on eval_ood_rule"
    assert (
        by[("x", "success_rate")]["comparison"] == "SFT on varied rules step 10 - RL, VIter 5 step 6 on eval_ood_rule"
    )
    diff = float(by[("ix", "success_rate")]["diff"])
    assert diff == pytest.approx((round(ood * EPISODES) - round(0.05 * EPISODES)) / EPISODES, rel=1e-5)
    for key in ("ix", "x"):  # with the rule-OOD diagnostics
        assert {(key, "rule_memorisation_rate"), (key, "number_accuracy")} <= set(by)
        assert by[(key, "success_rate")]["paper_direction"] == "+"
    # varied 10% memorised vs SFT 30%: lowered, the direction (ix) expects of it
    assert by[("ix", "rule_memorisation_rate")]["verdict"] == HELD
    md = out["summary_md"].read_text()
    (ix_row, *_), (x_row, *_) = table_rows(md, "ix"), table_rows(md, "x")
    assert "varied-rule SFT raises rule-OOD episode success over SFT" in ix_row and ix_row.endswith(f"**{ix}** |")
    assert "varied-rule SFT reaches RL on rule-OOD episode success at equal compute" in x_row
    assert x_row.endswith(f"**{x}** |")
    assert "arXiv 2510.00237" in md.split("- **(ix)", 1)[1].split("\n", 1)[0]
    # the RL arm and every other claim keep their checkpoints: sft-varied is not an RL run
    assert by[("iv", "success_rate")]["comparison"] == "RL, VIter 5 step 6 - SFT step 10 on eval_ood_rule"
    assert by[("v", "success_rate")]["comparison"] == "RL, VIter 5 step 3 - RL, VIter 1 step 6 on eval_ood_rule"


def test_varied_rule_sft_off_the_sft_steps_is_matched_in_compute_and_stays_out_of_equal_compute(tmp_path):
    """sft-varied evaluated at steps 4 (1.2 GFLOPs) and 12 (1.3): the claims take step 12, the closest in compute
    to SFT step 10 (1.5). Were it in the equal-compute selection, its budget (1.3) would move RL, VIter 1 to step 3."""
    files = study_files(tmp_path / "results", AGREE) + varied_files(
        tmp_path / "results", 0.7, steps=((4, 1.2), (12, 1.3))
    )
    out = report_of(tmp_path, files)
    by = by_claim(out["claims_csv"])
    assert by[("ix", "success_rate")]["comparison"] == "SFT on varied rules step 12 - SFT step 10 on eval_ood_rule"
    assert by[("v", "success_rate")]["comparison"] == "RL, VIter 5 step 3 - RL, VIter 1 step 6 on eval_ood_rule"
    md = out["summary_md"].read_text()
    assert "beside SFT: SFT on varied rules step 12 (1.3 GFLOPs)" in md
    with open(out["summary_csv"]) as fh:
        runs = list(dict.fromkeys(r["run"] for r in csv.DictReader(fh)))
    assert runs == ["base", "init", "sft", SFT_VARIED_RUN, "rl-v1", "rl-v5", "rl-nosft"]


def test_a_study_without_sft_varied_makes_no_claims_ix_or_x(tmp_path):
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    assert not {"ix", "x"} & {r["claim"] for r in read_claims(out["claims_csv"])}
    md = out["summary_md"].read_text()
    assert not table_rows(md, "ix") and not table_rows(md, "x")
    assert "varied" not in md


def test_sft_varied_is_drawn_beside_sft(tmp_path):
    """The compute and step figures draw the sft-varied curve, the OOD-change figure its bar: each differs from
    the same study's without it."""
    root = tmp_path / "results"
    plain = report_of(tmp_path / "plain", study_files(root, AGREE))
    varied = report_of(tmp_path / "varied", study_files(root, AGREE) + varied_files(root, 0.7))
    for name in ("id_ood_vs_compute", "success_vs_step", "ood_change"):
        _assert_real_png(varied[name])
        assert varied[name].read_bytes() != plain[name].read_bytes(), name


# --------------------------------------------------------------------------- extra OOD splits
def test_extra_splits_get_a_section_with_each_split_title(tmp_path):
    root = tmp_path / "results"
    files = study_files(root, AGREE) + varied_files(root, 0.7)
    files += extra_split_files(root, {"init": 0.20, "sft": 0.05, SFT_VARIED_RUN: 0.30, "rl-v5": 0.45},
                               runs=[(SFT_VARIED_RUN, s, g) for s, g in VARIED_STEPS])  # fmt: skip
    md = report_of(tmp_path, files)["summary_md"].read_text()
    harder = section(md, "### Harder OOD splits")
    assert harder
    header = next(line for line in harder.splitlines() if line.startswith("| split | episodes"))
    assert "| init | SFT | SFT on varied rules | RL | SFT - init | SFT on varied rules - init | RL - init |" in header
    for split in EXTRA_SPLITS:
        title = split_title("gp_l", split)
        assert title == getattr(get_task("gp_l"), "split_titles", {}).get(split, split)
        row = next(line for line in harder.splitlines() if line.startswith(f"| {title} | 234 (234) |"))
        # init 20%, SFT 5%, varied 30%, RL 45%, each with its interval; paired changes from init
        assert re.search(r"\| 20\.0 \[.*\| 5\.0 \[.*\| 30\.0 \[.*\| 45\.0 \[", row), row
        assert re.search(r"\| -15\.0 \[[^|]*\| \+9\.8 \[[^|]*\| \+24\.8 \[[^|]*\|$", row), row
    # the diagnostics below: rule memorisation on the splits that record it, number accuracy on every one
    diagnostics = [line for line in harder.splitlines() if "| rule memorisation |" in line]
    assert len(diagnostics) == len(MEMORISING_SPLITS)
    assert any(line.endswith("| 10.0% | 40.0% | 10.0% | 10.0% |") for line in diagnostics)
    assert sum("| number accuracy |" in line for line in harder.splitlines()) == len(EXTRA_SPLITS)


def test_extra_split_titles_come_from_the_task(tmp_path, monkeypatch):
    task_class = type(get_task("gp_l"))
    titles = {split: f"Harder {i}: a title of the task's" for i, split in enumerate(EXTRA_SPLITS)}
    monkeypatch.setattr(task_class, "split_titles", titles, raising=False)
    root = tmp_path / "results"
    md = report_of(tmp_path, study_files(root, AGREE) + extra_split_files(root, {}))["summary_md"].read_text()
    harder = section(md, "### Harder OOD splits")
    for title in titles.values():
        assert f"| {title} |" in harder
    assert "SFT on varied rules" not in harder  # no sft-varied run: no column for it


def test_no_extra_splits_no_section(tmp_path):
    md = report_of(tmp_path, study_files(tmp_path / "results", AGREE))["summary_md"].read_text()
    assert "Harder OOD splits" not in md


def test_a_study_with_extra_splits_builds_the_whole_report(tmp_path):
    root = tmp_path / "results"
    files = study_files(root, AGREE) + extra_split_files(root, {"sft": 0.05, "rl-v5": 0.45})
    out = report_of(tmp_path, files)
    for name in study_figures({"tasks": ["gp_l"]}):
        _assert_real_png(out[name])
    with open(out["summary_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"eval_id", "eval_ood_rule", *EXTRA_SPLITS}
    by = by_claim(out["claims_csv"])  # the claims stay on ID and rule OOD
    assert by[("ii", "success_rate")]["comparison"] == "SFT step 10 - init on eval_ood_rule"
    assert by[("ii", "success_rate")]["verdict"] == HELD
    md = out["summary_md"].read_text()
    assert "### Harder OOD splits" in md and "### Diagnostics on the rule-OOD split" in md
