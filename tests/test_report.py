"""The report stage on constructed evaluation outputs (eval JSON files and their episode tables):
table rows, intervals, equal-compute picks, figures that are really drawn, and paired verdicts
that follow the episodes."""

from __future__ import annotations

import csv
import itertools
import json
import re
import statistics
from pathlib import Path

import pytest

from sftvsrl import report
from sftvsrl.evaluate import episodes_file
from sftvsrl.report import build_report, equal_compute_steps, load_evals, seed_points, task_title
from sftvsrl.stats import HELD, INCONCLUSIVE, NOT_HELD, NOT_TESTED, wilson_interval

PAPER_FILE = Path(__file__).resolve().parents[1] / "config" / "paper_results.yaml"  # copy of shared/
RANKS = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]
DISTINCT_HANDS = list(itertools.combinations_with_replacement(RANKS, 4))  # 1820 rank multisets


def episode_table(
    task: str,
    split: str,
    p: float,
    episodes: int,
    memorised: float | None,
    hands: list[tuple[str, ...]],
    recognised: float | None = None,
) -> list[dict]:
    """Episodes in the shape `sftvsrl.evaluate` writes. Success on the first round(p n) rows, rule
    memorisation on the last round(m n) and (GP-VL) the cards recognised on the first round(r n): two
    checkpoints of one study then differ in one direction. Rows take the hands in blocks, so with fewer
    hands than rows a hand's episodes share their outcome."""
    k = round(p * episodes)
    m = round((memorised or 0.0) * episodes)
    r = round((recognised or 0.0) * episodes)
    records = []
    for i in range(episodes):
        success, mem = i < k, i >= episodes - m
        info = {"parsed": True, "number_correct": not mem}
        if split == "eval_ood_rule":
            info["rule_memorised"] = mem
        if recognised is not None:
            info["cards_correct"] = i < r
        reward = 5.0 if success else -1.0
        records.append(
            {
                "index": i,
                "id": f"{task}-{split}-{i:06d}",
                "row": {
                    "hand": {"cards": list(hands[i * len(hands) // episodes])},
                    "rule": "ood" if "ood" in split else "id",
                    "target": 24,
                },
                "success": success,
                "num_attempts": 1,
                "attempts": [{"reward": reward, "correct": success, "info": info}],
                "metrics": {"success": float(success), "attempts": 1.0, "return": reward},
            }
        )
    return records


def write_eval(
    root: Path,
    task: str,
    seed: int,
    run: str,
    step: int,
    split: str,
    p: float,
    *,
    episodes: int = 100,
    gflops: float = 0.0,
    computed_gflops: float | None = None,
    n_params: int = 135_000_000,
    memorised: float | None = None,
    recognised: float | None = None,
    hands: list[tuple[str, ...]] | None = None,
    with_episodes: bool = True,
    train_start: str | None = None,
    **extra,
) -> Path:
    """An eval JSON and, beside it, its episode table, as `sftvsrl.evaluate` writes them."""
    path = root / task / f"seed{seed}" / "eval" / run / f"ckpt-{step}" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"episodes": episodes, "success_rate": p, "success_se": (p * (1 - p) / episodes) ** 0.5, **extra}
    if memorised is not None and split == "eval_ood_rule":
        metrics["rule_memorisation_rate"] = memorised
    if memorised is not None:
        metrics["number_accuracy"] = 1.0 - memorised
    if recognised is not None:
        metrics["recognition_accuracy"] = recognised
    path.write_text(
        json.dumps(
            {
                "task": task,
                "seed": seed,
                "run": run,
                "step": step,
                "split": split,
                "viter": 5,
                # what the training run recorded in compute.json: RL's VIter (rl-nosft trains at 5 here)
                "train_viter": int(run.removeprefix("rl-v").split("-")[0])
                if run.startswith("rl-v")
                else 5
                if run == "rl-nosft"
                else None,
                "temperature": 0.7,
                "episodes": episodes,
                "compute": {
                    "n_params": n_params,
                    "flops": gflops * 1e9,
                    "gflops": gflops,
                    "train_start": train_start,
                    # as a ledger writes both accountings; absent, as an older ledger: the one figure
                    **({} if computed_gflops is None else {"computed_gflops": computed_gflops}),
                },
                "metrics": metrics,
            }
        )
    )
    if with_episodes:
        table = episode_table(task, split, p, episodes, memorised, hands or DISTINCT_HANDS, recognised)
        episodes_file(path).write_text("".join(json.dumps(r) + "\n" for r in table))
    return path


# (run, step, gflops) of a small study: init at 1 GFLOP, SFT and RL add compute from there.
CHECKPOINTS = [
    ("base", 0, 0.0),
    ("init", 0, 1.0),
    ("sft", 10, 1.5),
    ("sft", 20, 3.0),
    ("rl-v1", 3, 1.3),
    ("rl-v1", 6, 1.8),
    ("rl-v5", 3, 1.6),
    ("rl-v5", 6, 2.2),
    ("rl-nosft", 3, 0.4),
    ("rl-nosft", 6, 0.9),
]


def study_files(
    root: Path, scores: dict[tuple[str, str], float], *, seeds=(0,), episodes=234, n_params=135_000_000, **kwargs
) -> list[str]:
    """Eval files for every checkpoint; `scores[(run, split)]` is the success at every step of that run."""
    files = []
    for seed in seeds:
        for run, step, gflops in CHECKPOINTS:
            for split in ("eval_id", "eval_ood_rule"):
                fmt = 1.0 if run in ("base", "rl-nosft") else 0.05
                files.append(
                    str(
                        write_eval(
                            root,
                            "gp_l",
                            seed,
                            run,
                            step,
                            split,
                            scores[(run, split)],
                            episodes=episodes,
                            gflops=gflops,
                            n_params=n_params,
                            format_error_rate=fmt,
                            memorised=0.3 if run == "sft" else 0.1,
                            **kwargs,
                        )
                    )
                )
    return files


AGREE = {  # the paper's pattern, strongly
    ("base", "eval_id"): 0.0,
    ("base", "eval_ood_rule"): 0.0,
    ("init", "eval_id"): 0.30,
    ("init", "eval_ood_rule"): 0.30,
    ("sft", "eval_id"): 0.60,
    ("sft", "eval_ood_rule"): 0.05,
    ("rl-v1", "eval_id"): 0.40,
    ("rl-v1", "eval_ood_rule"): 0.34,
    ("rl-v5", "eval_id"): 0.50,
    ("rl-v5", "eval_ood_rule"): 0.50,
    ("rl-nosft", "eval_id"): 0.0,
    ("rl-nosft", "eval_ood_rule"): 0.0,
}
CONTRADICT = {  # SFT OOD up strongly, RL OOD down strongly, SFT ID down, VIter hurts, no-SFT RL works
    ("base", "eval_id"): 0.0,
    ("base", "eval_ood_rule"): 0.0,
    ("init", "eval_id"): 0.30,
    ("init", "eval_ood_rule"): 0.30,
    ("sft", "eval_id"): 0.10,
    ("sft", "eval_ood_rule"): 0.60,
    ("rl-v1", "eval_id"): 0.40,
    ("rl-v1", "eval_ood_rule"): 0.25,
    ("rl-v5", "eval_id"): 0.20,
    ("rl-v5", "eval_ood_rule"): 0.05,
    ("rl-nosft", "eval_id"): 0.40,
    ("rl-nosft", "eval_ood_rule"): 0.30,
}
CLAIMS = ("i", "ii", "iii", "iv", "v", "vi", "vii")


def claim_verdicts(md: str) -> dict[str, str]:
    """Claim key -> verdict of its first row (the claim's own metric) in the claims table of summary.md."""
    out: dict[str, str] = {}
    for line in md.splitlines():
        m = re.match(r"\| \((i|ii|iii|iv|v|vi|vii)\) \|.*\| \*\*(.+?)\*\* \|$", line)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


def read_claims(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


GP_SECTION = {"num_cards": 4, "target": 24}  # the report reads the task's setting for its titles


def report_of(tmp_path: Path, files: list[str], config: dict | None = None) -> dict[str, Path]:
    config = config or {"study": "t", "tasks": ["gp_l"], "gp": GP_SECTION}
    return build_report(config, files, tmp_path / "out", paper_file=PAPER_FILE, log_to_mlflow=False)


# --------------------------------------------------------------------------- aggregation
def test_summary_csv_rows_values_and_wilson_intervals(tmp_path):
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    with open(out["summary_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CHECKPOINTS) * 2
    assert {
        "task",
        "seed",
        "run",
        "step",
        "split",
        "gflops",
        "success_rate",
        "success_se",
        "success_ci_low",
        "success_ci_high",
        "format_error_rate",
        "rule_memorisation_rate",
    } <= set(rows[0])
    # runs in study order: base, init, sft, rl-v1, rl-v5, rl-nosft
    order = list(dict.fromkeys(r["run"] for r in rows))
    assert order == ["base", "init", "sft", "rl-v1", "rl-v5", "rl-nosft"]
    row = next(r for r in rows if r["run"] == "sft" and r["step"] == "20" and r["split"] == "eval_ood_rule")
    assert float(row["success_rate"]) == pytest.approx(0.05)
    low, high = wilson_interval(round(0.05 * 234), 234)
    assert (float(row["success_ci_low"]), float(row["success_ci_high"])) == (
        pytest.approx(low, rel=1e-4),
        pytest.approx(high, rel=1e-4),
    )
    assert float(row["gflops"]) == pytest.approx(3.0)
    assert float(row["rule_memorisation_rate"]) == pytest.approx(0.3)
    assert row["train_viter"] == ""
    nosft = next(r for r in rows if r["run"] == "rl-nosft")
    assert nosft["train_viter"] == "5"  # RL without SFT trained with a VIter too: the record says which
    base = next(r for r in rows if r["run"] == "base" and r["split"] == "eval_id")
    assert float(base["success_ci_low"]) == 0.0 and 0 < float(base["success_ci_high"]) < 0.02  # Wilson at k = 0


def test_duplicates_are_rejected(tmp_path):
    path = write_eval(tmp_path, "gp_l", 0, "init", 0, "eval_id", 0.25)
    with pytest.raises(ValueError, match="same"):
        load_evals([path, path])


def test_seed_mean_carries_the_pooled_wilson_interval(tmp_path):
    files = [write_eval(tmp_path, "gp_l", s, "init", 0, "eval_id", p) for s, p in ((0, 0.2), (1, 0.4), (2, 0.3))]
    p = seed_points(load_evals(files))[("gp_l", "init", 0, "eval_id")]
    assert p.value == pytest.approx(0.3)
    assert (p.ci_low, p.ci_high) == tuple(pytest.approx(x) for x in wilson_interval(90, 300))
    assert p.n_seeds == 3 and p.episodes == 300


def test_equal_compute_picks_the_checkpoint_closest_to_the_common_budget(tmp_path):
    pts = seed_points(load_evals(study_files(tmp_path, AGREE)))
    sel = equal_compute_steps(pts, "gp_l", ["sft", "rl-v1", "rl-v5"])
    # largest compute: sft 3.0, rl-v1 1.8, rl-v5 2.2 -> budget 1.8; closest: sft 1.5, rl-v1 1.8, rl-v5 1.6
    assert sel.budget == pytest.approx(1.8)
    assert sel.steps == {"sft": 10, "rl-v1": 6, "rl-v5": 3}


def test_a_cheaper_rl_arm_does_not_set_the_budget_of_sft_against_the_main_arm(tmp_path):
    """The VIter-1 arm reaches 1.8 GFLOPs, the main (VIter-5) arm 2.2: SFT is compared with the main arm at 2.2,
    its last checkpoint, not at an early one that the cheaper arm's budget would pick; the VIter ablation keeps
    equal compute among the RL arms (1.8: VIter 5 step 3)."""
    pts = seed_points(load_evals(study_files(tmp_path, AGREE)))
    sel = equal_compute_steps(pts, "gp_l", ["sft", "rl-v1", "rl-v5"], budget_runs=["sft", "rl-v5"])
    assert sel.budget == pytest.approx(2.2)
    assert sel.steps == {"sft": 10, "rl-v1": 6, "rl-v5": 6}
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    rows = read_claims(out["claims_csv"])
    by = {(r["claim"], r["metric"]): r for r in reversed(rows)}  # each claim's first row of a metric
    for key in ("iii", "vii"):
        assert by[(key, "success_rate")]["comparison"].startswith("RL, VIter 5 step 6 - init"), key
    assert by[("v", "success_rate")]["comparison"] == "RL, VIter 5 step 3 - RL, VIter 1 step 6 on eval_ood_rule"
    md = out["summary_md"].read_text()
    assert "(the budget: the SFT arm's and the main RL arm's)" in md
    assert "VIter ablation (claim (v), Figure 10), equal compute among the RL arms: checkpoints closest to 1.8" in md


def test_equal_compute_pairing_follows_the_accounting(tmp_path):
    """RL's update read fewer tokens than it played (silent groups skipped): in the paper's accounting RL
    step 6 cost 3.1 GFLOPs and faces SFT step 20 (3.0); counted as computed it cost 1.9 and faces SFT step 10."""
    files = []
    for run, step, paper, computed in [
        ("init", 0, 1.0, 1.0),
        ("sft", 10, 1.5, 1.5),
        ("sft", 20, 3.0, 3.0),
        ("rl-v5", 3, 1.6, 1.3),
        ("rl-v5", 6, 3.1, 1.9),
    ]:
        for split, p in (("eval_id", 0.3), ("eval_ood_rule", 0.3)):
            path = write_eval(
                tmp_path / "results", "gp_l", 0, run, step, split, p, gflops=paper, computed_gflops=computed
            )
            files.append(str(path))
    picked = {}
    for accounting in ("paper", "computed"):
        pts = seed_points(load_evals(files, accounting))
        picked[accounting] = equal_compute_steps(pts, "gp_l", ["sft", "rl-v5"]).steps
    assert picked == {"paper": {"sft": 20, "rl-v5": 6}, "computed": {"sft": 10, "rl-v5": 6}}
    df = load_evals(files, "computed")
    row = df[(df["run"] == "rl-v5") & (df["step"] == 6)].iloc[0]
    assert (row["gflops"], row["paper_gflops"], row["computed_gflops"]) == (1.9, 3.1, 1.9)
    for accounting, sft_step in (("paper", 20), ("computed", 10)):
        config = {"study": "t", "tasks": ["gp_l"], "gp": GP_SECTION, "report": {"compute_accounting": accounting}}
        md = report_of(tmp_path / accounting, files, config)["summary_md"].read_text()
        (line,) = [x for x in md.splitlines() if x.startswith(f"Equal compute ({accounting} accounting)")]
        assert f"SFT step {sft_step} (" in line and f"SFT step {30 - sft_step} (" not in line
        assert f"`report.compute_accounting: {accounting}`" in md and "loss type `dapo`" in md
    with pytest.raises(ValueError, match="unknown compute accounting"):
        load_evals(files, "flops")


def test_virl_uses_per_step_accuracy(tmp_path):
    f1 = write_eval(
        tmp_path, "virl_l", 0, "init", 0, "eval_ood_rule", 0.1, per_step_accuracy=0.8, per_step_accuracy_se=0.02
    )
    p = seed_points(load_evals([f1]))[("virl_l", "init", 0, "eval_ood_rule")]
    assert p.value == pytest.approx(0.8)
    assert (p.ci_low, p.ci_high) == (
        pytest.approx(0.8 - 1.96 * 0.02, abs=1e-4),
        pytest.approx(0.8 + 1.96 * 0.02, abs=1e-4),
    )


def virl_study_files(root: Path, scores: dict[tuple[str, str], float], routes: int = 64) -> list[str]:
    """A V-IRL-L study's eval files and episode tables: every route has 4 attempts; on the first round(p n)
    routes every attempt is right, on the rest none, and a rule-OOD route that misses a turn answers it
    with an absolute direction. So per-step accuracy is p and two checkpoints differ route by route."""
    files = []
    for run, step, gflops in CHECKPOINTS:
        for split in ("eval_id", "eval_ood_rule"):
            p = scores[(run, split)]
            path = write_eval(
                root, "virl_l", 0, run, step, split, p, episodes=routes, gflops=gflops, with_episodes=False,
                per_step_accuracy=p, per_step_accuracy_se=(p * (1 - p) / routes) ** 0.5,
                absolute_turn_rate=(1 - p) if split == "eval_ood_rule" else 0.0,
            )  # fmt: skip
            table = []
            for i in range(routes):
                right = i < round(p * routes)
                metrics = {"success": float(right), "attempts": 4.0, "correct_actions": 4.0 * right,
                           "return": 4.0 if right else -4.0, "turn_attempts": 2.0,
                           "absolute_turns": 2.0 * (not right and split == "eval_ood_rule")}  # fmt: skip
                table.append(
                    {"index": i, "id": f"virl_l-{split}-{i:05d}", "row": {"route": {"id": f"eval-{i}"}},
                     "success": right, "num_attempts": 4, "metrics": metrics,
                     "attempts": [{"reward": 1.0 if right else -1.0, "correct": right, "info": {}}] * 4}
                )  # fmt: skip
            episodes_file(path).write_text("".join(json.dumps(r) + "\n" for r in table))
            files.append(str(path))
    return files


def test_a_virl_summary_counts_routes_where_a_gp_summary_counts_hands(tmp_path):
    """The report names each task's resampling unit (`Task.unit`): the methods text, the rows line, the claims
    table and each claim's test say routes for V-IRL, hands for GP, and never the other's."""
    virl = report_of(
        tmp_path / "v", virl_study_files(tmp_path / "v" / "results", AGREE), {"study": "t", "tasks": ["virl_l"]}
    )
    gp = report_of(tmp_path / "g", study_files(tmp_path / "g" / "results", AGREE))
    for out, units, other, n in ((virl, "routes", "hand", 64), (gp, "hands", "route", 234)):
        md = out["summary_md"].read_text()
        assert f"paired cluster bootstrap over the unit each task resamples ({units}:" in md
        assert f"eval_id {n} episodes over {n} distinct {units}" in md
        assert f"; {n} {units}, {n} episode pairs)" in md  # a claim's test
        assert f" | {n} {units} ({n}) | " in md  # the claims table
        assert other not in md.lower()


@pytest.mark.parametrize("scores, verdict", [(AGREE, HELD), (CONTRADICT, NOT_HELD)])
def test_virl_claims_pair_routes_and_follow_the_episodes_either_way(tmp_path, scores, verdict):
    out = report_of(tmp_path, virl_study_files(tmp_path / "results", scores), {"study": "t", "tasks": ["virl_l"]})
    md = out["summary_md"].read_text()
    assert claim_verdicts(md) == dict.fromkeys(CLAIMS, verdict)
    rows = {(r["claim"], r["metric"]): r for r in reversed(read_claims(out["claims_csv"]))}
    ii = rows[("ii", "per_step_accuracy")]
    # every route is its own unit: 64 routes, 64 pairs, per-step accuracy paired as ratios of counts
    assert (int(ii["units"]), int(ii["episodes"])) == (64, 64)
    sft_ood = round(scores[("sft", "eval_ood_rule")] * 64) / 64
    assert float(ii["diff"]) == pytest.approx(sft_ood - round(0.3 * 64) / 64)
    # the task's rule-OOD diagnostic is tested with its own direction: absolute turns rise as accuracy falls
    assert rows[("ii", "absolute_turn_rate")]["verdict"] == verdict
    assert "V-IRL" in md and "per-step accuracy" in md


def test_task_title_says_the_setting():
    assert task_title("gp_l", {"gp": {"num_cards": 3, "target": 24}}) == "GeneralPoints, 3 cards, target 24 (GP-L)"
    from sftvsrl.config import section_with_defaults

    defaults = {"gp": section_with_defaults("gp", {})}  # what validation fills into a config without them
    assert task_title("gp_l", defaults) == "GeneralPoints, 4 cards, target 24 (GP-L)"
    assert "V-IRL" in task_title("virl_l", {})


# --------------------------------------------------------------------------- figures
def _assert_real_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 10_000, (path, len(data))
    with Image.open(path) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 50, (path, len(colours or []))


def test_a_study_draws_the_figures_of_the_conditions_it_ran(tmp_path):
    """A text-only study without RL from SFT checkpoints gets no recognition figure (Figure 8) and no RL-from-SFT
    figure, not even as placeholders; a study with an image task and rl.starts gets both."""
    from sftvsrl.names import FIGURES
    from sftvsrl.report import study_figures

    files = study_files(tmp_path / "results", AGREE, seeds=(0, 1))
    out = report_of(tmp_path, files)
    drawn = [name for name in FIGURES if name not in ("recognition_vs_compute", "rl_from_sft")]
    assert [name for name in FIGURES if name in out] == drawn
    assert sorted(p.name for p in (tmp_path / "out" / "figures").iterdir()) == sorted(f"{n}.png" for n in drawn)
    for name in drawn:
        assert out[name] == tmp_path / "out" / "figures" / f"{name}.png"
        _assert_real_png(out[name])
    assert "recognition_vs_compute" not in out["summary_md"].read_text()
    assert study_figures({"tasks": ["gp_l", "gp_vl"], "rl": {"starts": ["init", "sft-4"]}}) == list(FIGURES)
    assert "rl_from_sft" not in study_figures({"tasks": ["gp_vl"], "rl": {"starts": ["init"]}})


def test_figures_are_not_empty_when_runs_are_missing(tmp_path):
    """Only init was evaluated: every figure still exists and says what is missing."""
    files = [write_eval(tmp_path, "gp_l", 0, "init", 0, s, 0.2, gflops=1.0) for s in ("eval_id", "eval_ood_rule")]
    out = report_of(tmp_path, files, {"study": "t", "tasks": ["gp_l", "virl_l"], "gp": GP_SECTION})
    for name in ("id_ood_vs_compute", "success_vs_step", "ood_change", "viter_ablation", "rl_nosft"):
        _assert_real_png(out[name])
    assert "not tested" in out["summary_md"].read_text()


# --------------------------------------------------------------------------- summary.md and claims.csv
def test_summary_says_held_when_episodes_agree_with_the_paper(tmp_path):
    config = {"study": "t", "tasks": ["gp_l"], "gp": {"num_cards": 3, "target": 24}}
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE), config)
    md = out["summary_md"].read_text()
    assert claim_verdicts(md) == dict.fromkeys(CLAIMS, HELD)
    claims_section = md.split("### Claims")[1].split("### Beside")[0]
    assert "did not hold" not in claims_section
    assert "## GeneralPoints, 3 cards, target 24 (GP-L): `gp_l`" in md
    # the paper's numbers stand beside ours
    assert "| paper (11B) | OOD | 11.5 | 3.4 | 15.0 | -8.1 | +3.5 |" in md
    assert "Paper: init -> SFT: 11.5% -> 3.4% (-8.1 points)." in md
    assert any(line.startswith("| 5 | ") and line.endswith(" | +2.99 |") for line in md.splitlines())  # VIter 5
    # equal compute: sft step 10 vs rl-v5 step 6 (budget 2.2 GFLOPs, the main RL arm's; the VIter ablation
    # compares at rl-v1's 1.8: rl-v5 step 3); init OOD 70 of 234 -> SFT 12 of 234
    assert "SFT step 10" in md and "RL, VIter 5 step 6" in md and "RL, VIter 5 step 3" in md
    # 58 hands lost, none gained: exact McNemar, every hand distinct
    assert "-24.8 [" in claims_section and "exact McNemar; 234 hands, 234 episode pairs" in claims_section
    assert "p < 0.001" in claims_section and "| 234 hands (234) |" in claims_section
    assert "the 95% paired interval excludes 0" not in md  # the rule is stated in words, once
    assert "*held*: the interval excludes 0 in the paper's direction" in md
    # rates carry Wilson intervals: init OOD 30% (70 of 234)
    low, high = wilson_interval(70, 234)
    assert f"30.0% [{100 * low:.1f}, {100 * high:.1f}]" in md
    # diagnostics: rule memorisation and format error columns; the scale stated as a fact
    assert "rule memorisation" in md and "format error" in md
    assert "toy run" not in md and "a 135M-parameter model on 234 episodes per split" in md
    assert "234 episodes over 234 distinct hands" in md


def test_verdicts_csv_holds_the_claims_tables_of_summary_md(tmp_path):
    """The report's first page renders verdicts.csv: the same rows as summary.md's claims table (the claim's
    text, the difference with its interval, p, the verdict), led by the task, rounded as summary.md rounds."""
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    with open(out["verdicts_csv"]) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["task", "#", "paper's finding", "metric", "ours: difference, points [95% CI]", "p",
                       "units (episodes)", "verdict"]  # fmt: skip
    md = out["summary_md"].read_text()
    claims_table = [line for line in md.split("### Claims")[1].splitlines() if line.startswith("| (")]
    # the claim's "(i)" escaped for rst, which would read it as a list's enumerator and drop it
    assert all(r[1].startswith("\\(") for r in rows[1:])
    assert ["| " + " | ".join([r[1].lstrip("\\"), *r[2:]]) + " |" for r in rows[1:]] == claims_table
    assert {r[0] for r in rows[1:]} == {"GeneralPoints, 4 cards, target 24 (GP-L)"}
    first = rows[1]
    assert first[1] == "\\(i)" and first[2].startswith("SFT raises") and first[-1] == f"**{HELD}**"
    assert re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", first[4])


def test_claims_csv_has_a_row_per_claim_and_metric(tmp_path):
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    rows = read_claims(out["claims_csv"])
    assert list(rows[0]) == report.CLAIMS_COLUMNS
    by = {(r["claim"], r["metric"]): r for r in reversed(rows)}  # each claim's first row of a metric
    assert {k for k, _ in by} == set(CLAIMS)
    # (ii)-(iv) are also tested on the rule-OOD diagnostics, each with the paper's direction
    for key in ("ii", "iii", "iv"):
        assert {(key, "success_rate"), (key, "rule_memorisation_rate"), (key, "number_accuracy")} <= set(by)
    sft_mem = by[("ii", "rule_memorisation_rate")]  # SFT 30% memorised vs init 10%: raised, as the paper says
    assert sft_mem["paper_direction"] == "+" and sft_mem["verdict"] == HELD
    assert float(sft_mem["diff"]) == pytest.approx(round(0.3 * 234) / 234 - round(0.1 * 234) / 234, rel=1e-5)
    assert by[("iii", "rule_memorisation_rate")]["verdict"] == INCONCLUSIVE  # RL and init both at 10%
    assert by[("iv", "number_accuracy")]["verdict"] == HELD  # RL reads values better than SFT
    ii = by[("ii", "success_rate")]
    assert ii["comparison"] == "SFT step 10 - init on eval_ood_rule"
    assert float(ii["ci_low"]) < float(ii["diff"]) < float(ii["ci_high"]) < 0
    assert int(ii["units"]) == 234 and int(ii["episodes"]) == 234 and float(ii["p_value"]) < 1e-10
    # (v) pairs the two RL runs directly; (vi) pairs the best rl-nosft checkpoint with RL from init on ID
    assert by[("v", "success_rate")]["comparison"] == "RL, VIter 5 step 3 - RL, VIter 1 step 6 on eval_ood_rule"
    assert by[("vi", "success_rate")]["comparison"].endswith("- RL, VIter 5 step 6 on eval_id")


def test_summary_says_did_not_hold_when_episodes_contradict_the_paper(tmp_path):
    out = report_of(tmp_path, study_files(tmp_path / "results", CONTRADICT))
    md = out["summary_md"].read_text()
    assert claim_verdicts(md) == dict.fromkeys(CLAIMS, NOT_HELD)
    assert "The paper's finding **did not hold** in this run" in md


def test_summary_says_inconclusive_when_the_interval_holds_zero(tmp_path):
    close = dict(AGREE)
    close.update({("sft", "eval_ood_rule"): 0.29, ("rl-v5", "eval_ood_rule"): 0.31, ("sft", "eval_id"): 0.31})
    out = report_of(tmp_path, study_files(tmp_path / "results", close, episodes=24))
    verdicts = claim_verdicts(out["summary_md"].read_text())
    assert verdicts["i"] == verdicts["ii"] == verdicts["iii"] == verdicts["iv"] == INCONCLUSIVE


def test_repeated_hands_are_resampled_as_hands(tmp_path):
    """234 episodes over 12 hands: the same success rates, far less evidence."""
    hands = DISTINCT_HANDS[:12]
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE, hands=hands))
    ii = next(r for r in read_claims(out["claims_csv"]) if r["claim"] == "ii" and r["metric"] == "success_rate")
    assert (int(ii["units"]), int(ii["episodes"])) == (12, 234)
    assert ii["test"] == "paired permutation"
    distinct = report_of(tmp_path / "d", study_files(tmp_path / "d" / "results", AGREE))
    ii_distinct = next(
        r for r in read_claims(distinct["claims_csv"]) if r["claim"] == "ii" and r["metric"] == "success_rate"
    )
    assert ii["diff"] == ii_distinct["diff"]
    width = float(ii["ci_high"]) - float(ii["ci_low"])
    assert width > 1.5 * (float(ii_distinct["ci_high"]) - float(ii_distinct["ci_low"]))
    assert "234 episodes over 12 distinct hands" in out["summary_md"].read_text()


def test_seeds_pool_their_episode_pairs_into_the_hands(tmp_path):
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE, seeds=(0, 1), episodes=50))
    ii = next(r for r in read_claims(out["claims_csv"]) if r["claim"] == "ii" and r["metric"] == "success_rate")
    assert (int(ii["units"]), int(ii["episodes"])) == (50, 100)
    assert ii["verdict"] == HELD


def seed_rows(md: str) -> dict[str, list[str]]:
    """Claim key -> the cells of its row in summary.md's seed-by-seed table."""
    section = md.split("### Seed by seed")[1].split("\n### ")[0].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| (")]
    return {cells[0].strip()[1:-1]: [c.strip() for c in cells] for cells in rows}


def test_three_seeds_get_a_table_seed_by_seed_beside_the_pooled_verdict(tmp_path):
    """Seeds 0 and 1 follow the paper, seed 2 contradicts it: each seed's row keeps its own verdict, the pooled
    difference is the seeds' mean (every seed plays the same rows) and their spread is stated."""
    root = tmp_path / "results"
    files = [
        f for seed, scores in enumerate((AGREE, AGREE, CONTRADICT)) for f in study_files(root, scores, seeds=(seed,))
    ]
    md = report_of(tmp_path, files)["summary_md"].read_text()
    header = next(line for line in md.split("### Seed by seed")[1].splitlines() if line.startswith("| #"))
    assert "| seed 0 | seed 1 | seed 2 | SD of the seeds (points) |" in header
    rows = seed_rows(md)
    assert set(CLAIMS) <= set(rows)
    ii = rows["ii"]  # SFT on OOD: -25 points in seeds 0 and 1, +30 in seed 2
    assert ii[3].endswith(HELD) and ii[4].endswith(HELD) and ii[5].endswith(NOT_HELD)
    diffs = [float(cell.split(" [")[0]) for cell in ii[3:6]]
    assert diffs == pytest.approx([-24.8, -24.8, 29.9], abs=0.06)
    assert float(ii[2].split(" [")[0]) == pytest.approx(sum(diffs) / 3, abs=0.06)
    assert float(ii[6]) == pytest.approx(statistics.stdev(diffs), abs=0.1)
    one_seed = report_of(tmp_path / "one", study_files(tmp_path / "one" / "results", AGREE))
    assert "### Seed by seed" not in one_seed["summary_md"].read_text()


@pytest.mark.parametrize("scores, verdict", [(AGREE, HELD), (CONTRADICT, NOT_HELD)])
def test_the_viter_claim_pools_three_seeds_either_way(tmp_path, scores, verdict):
    """(v), more VIter more OOD gain, on three seeds of 60 rows: pooled, its pairs count every seed's episodes."""
    out = report_of(tmp_path, study_files(tmp_path / "results", scores, seeds=(0, 1, 2), episodes=60))
    compute, steps = [r for r in read_claims(out["claims_csv"]) if r["claim"] == "v"]
    assert compute["verdict"] == steps["verdict"] == verdict
    assert int(compute["episodes"]) == int(steps["episodes"]) == 3 * 60
    # equal compute (the budget: VIter 1's 1.8 GFLOPs at step 6) pairs VIter 5's step 3; equal steps its step 6
    assert "VIter 5 step 3" in compute["comparison"] and "VIter 1 step 6" in compute["comparison"]
    assert "VIter 5 step 6" in steps["comparison"] and "VIter 1 step 6" in steps["comparison"]
    md = out["summary_md"].read_text()
    assert "at equal RL steps" in md.split("### Seed by seed")[1]
    assert seed_rows(md)["v"][3:6] == [seed_rows(md)["v"][3]] * 3


def test_the_viter_claim_at_equal_steps_is_its_own_test(tmp_path):
    """VIter 5 ahead at equal steps but behind at equal compute: the two rows keep their own verdicts."""
    root = tmp_path / "results"
    files = study_files(root, AGREE, episodes=120)
    # VIter 5's step 3, its equal-compute checkpoint, falls below VIter 1's step 6 on rule OOD; its step 6 stays above
    write_eval(root, "gp_l", 0, "rl-v5", 3, "eval_ood_rule", 0.05, episodes=120, gflops=1.6, format_error_rate=0.05)
    out = report_of(tmp_path, files)
    compute, steps = [r for r in read_claims(out["claims_csv"]) if r["claim"] == "v"]
    assert (compute["verdict"], steps["verdict"]) == (NOT_HELD, HELD)
    assert float(compute["diff"]) < 0 < float(steps["diff"])


def test_a_study_without_the_sft_arm_tests_the_rl_claims_alone(tmp_path):
    """sft.arm false (config/laptop-viter.yaml): the SFT claims are not tested, the RL ones are, figures included."""
    files = [f for f in study_files(tmp_path / "results", AGREE) if "/eval/sft/" not in f]
    out = report_of(tmp_path, files)
    verdicts = claim_verdicts(out["summary_md"].read_text())
    assert {k: verdicts[k] for k in ("i", "ii", "iv")} == dict.fromkeys(("i", "ii", "iv"), NOT_TESTED)
    assert {k: verdicts[k] for k in ("iii", "v", "vi", "vii")} == dict.fromkeys(("iii", "v", "vi", "vii"), HELD)
    equal_compute = next(
        line for line in out["summary_md"].read_text().splitlines() if line.startswith("Equal compute")
    )
    assert "the main RL arm's; no SFT arm" in equal_compute and "the SFT arm's" not in equal_compute
    figures = [v for k, v in out.items() if k not in ("summary_csv", "claims_csv", "summary_md", "verdicts_csv")]
    assert figures and all(Path(f).stat().st_size > 0 for f in figures)


def test_the_viter_figure_names_the_ablations_own_budget(tmp_path, monkeypatch):
    """Figure 10's panel compares the RL arms at their own equal-compute budget (VIter 1's last checkpoint), not
    at the SFT-vs-main-arm budget the other claims use, and its note says which."""
    from matplotlib.figure import Figure

    labels, savefig = {}, Figure.savefig

    def record(fig, path, *args, **kwargs):
        labels[Path(path).stem] = [ax.get_xlabel() for ax in fig.axes]
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    md = (tmp_path / "out" / "summary.md").read_text()
    main_budget = md.split("Equal compute (paper accounting): checkpoints closest to ")[1].split(" GFLOPs")[0]
    viter_budget = md.split("equal compute among the RL arms: checkpoints closest to ")[1].split(" GFLOPs")[0]
    assert main_budget != viter_budget
    note = " ".join(labels["viter_ablation"])
    assert f"equal compute among the RL arms: checkpoints closest to {viter_budget} GFLOPs" in note
    assert main_budget not in note


def test_figures_show_each_seed_behind_the_seed_mean(tmp_path):
    """Three seeds at 20%, 30% and 40%: the point is their mean, and the curve draws the three seeds' own scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sftvsrl.report.figures import _plot_curve

    files = [
        str(write_eval(tmp_path, "gp_l", seed, run, step, "eval_id", p, gflops=g))
        for seed, p in enumerate((0.2, 0.3, 0.4))
        for run, step, g in (("init", 0, 1.0), ("sft", 10, 2.0))
    ]
    points = seed_points(load_evals(files))
    pts = [points[("gp_l", "init", 0, "eval_id")], points[("gp_l", "sft", 10, "eval_id")]]
    assert pts[0].value == pytest.approx(0.3) and pts[0].seed_values == pytest.approx((0.2, 0.3, 0.4))
    fig, ax = plt.subplots()
    _plot_curve(ax, pts, "SFT", "orange")
    offsets = [tuple(xy) for c in ax.collections if c.get_offsets().shape[0] == 6 for xy in c.get_offsets()]
    expected = sorted((g, v) for g in (1.0, 2.0) for v in (20.0, 30.0, 40.0))
    assert [x for xy in sorted(offsets) for x in xy] == pytest.approx([x for xy in expected for x in xy])
    plt.close(fig)


def test_missing_episode_tables_leave_claims_not_tested(tmp_path):
    """Old results without episodes.jsonl: the rates and their intervals remain, paired claims do not."""
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE, with_episodes=False))
    md = out["summary_md"].read_text()
    assert claim_verdicts(md) == dict.fromkeys(CLAIMS, NOT_TESTED)
    assert "no episode table" in md and "rerun the evaluation" in md
    assert {r["verdict"] for r in read_claims(out["claims_csv"])} == {NOT_TESTED}
    low, high = wilson_interval(70, 234)
    assert f"30.0% [{100 * low:.1f}, {100 * high:.1f}]" in md
    for name in ("ood_change", "viter_ablation"):
        _assert_real_png(out[name])


def test_paper_numbers_come_from_the_file_given(tmp_path):
    """The paper's numbers have one source, the YAML the rule passes: a changed number shows in the summary."""
    import yaml

    paper = yaml.safe_load(PAPER_FILE.read_text())
    paper["rule_ood"]["gp_l"]["init"] = 12.7
    paper_file = tmp_path / "paper.yaml"
    paper_file.write_text(yaml.safe_dump(paper))
    files = study_files(tmp_path / "results", AGREE)
    config = {"study": "t", "tasks": ["gp_l"], "gp": GP_SECTION}
    md = build_report(config, files, tmp_path / "out", paper_file=paper_file, log_to_mlflow=False)["summary_md"]
    assert "12.7% -> 3.4%" in md.read_text()
    with pytest.raises(FileNotFoundError, match="paper results file not found"):
        build_report(config, files, tmp_path / "out2", paper_file=tmp_path / "missing.yaml", log_to_mlflow=False)


# --------------------------------------------------------------------------- MLflow + CLI
def test_report_through_the_cli_logs_to_the_study_run(tmp_path, tiny_config):
    import mlflow

    from sftvsrl.cli import main
    from sftvsrl.tracking import ensure_study_run

    files = study_files(tmp_path / "results", AGREE, episodes=40)
    out_dir = tmp_path / "out"
    rc = main(
        [
            "report",
            "--config",
            json.dumps(tiny_config),
            "--evals",
            *files,
            "--out-dir",
            str(out_dir),
            "--paper",
            str(PAPER_FILE),
        ]
    )
    assert rc == 0
    assert (out_dir / "summary.csv").exists() and (out_dir / "summary.md").exists()
    run_id = ensure_study_run(tiny_config)
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    logged |= {a.path for a in client.list_artifacts(run_id, "report/figures")}
    assert {"report/summary.md", "report/summary.csv", "report/claims.csv", "report/figures/ood_change.png"} <= logged


def test_the_ui_link_lists_the_arms_by_name_with_their_curves_first(tmp_path, tiny_config):
    """The link `sftvsrl ui` prints, read as MLflow's UI reads it: its filter and order pick exactly the study's
    SFT and RL runs, by name (sorted by start time the UI would fold them under the study's run), and each carries
    its score on both splits in the first chart section (`CURVES_SECTION`), against the step and against MFLOPs."""
    from urllib.parse import parse_qs, urlsplit

    import mlflow

    from sftvsrl import tracking
    from sftvsrl.report.publish import CURVES_SECTION

    config = {**tiny_config, "tasks": ["gp_l"], "gp": GP_SECTION}
    tracking.ensure_study_run(config)
    for stage, viter in (("sft_init", None), ("sft", None), ("rl", 1), ("rl", 5)):
        tags = {tracking.TAG_RUN: f"rl-v{viter}"} if viter else None
        with tracking.job_run(config, stage.replace("sft_init", "init"), "gp_l", 0, viter, extra_tags=tags):
            pass
    build_report(
        config, study_files(tmp_path / "results", AGREE, episodes=40), tmp_path / "out", paper_file=PAPER_FILE
    )
    query = parse_qs(
        urlsplit(tracking.runs_view_url("http://x", "0", tracking.curves_filter(config["study"]))).fragment.split(
            "?", 1
        )[1]
    )
    assert query["orderByKey"] == ["tags.`mlflow.runName`"] and query["orderByAsc"] == ["true"]
    client = mlflow.MlflowClient()
    shown = client.search_runs(
        [tracking.experiment_id(config, client)],
        filter_string=query["searchFilter"][0],
        order_by=[f"{query['orderByKey'][0]} ASC"],
    )
    assert [r.info.run_name for r in shown] == ["rl-gp_l-s0-v1", "rl-gp_l-s0-v5", "sft-gp_l-s0"]
    for r in shown:
        curves = sorted(k for k in r.data.metrics if k.startswith(f"{CURVES_SECTION}/"))
        assert curves == [
            f"{CURVES_SECTION}/{s}_success_rate_by_{x}" for s in ("id", "ood_rule") for x in ("mflops", "step")
        ]
        # ahead of every other section: sections sort by name, and the trainers log clip_ratio/..., completions/...
        assert min(k.rsplit("/", 1)[0] for k in r.data.metrics if "/" in k) == CURVES_SECTION
        by_step = client.get_metric_history(r.info.run_id, f"{CURVES_SECTION}/ood_rule_success_rate_by_step")
        by_mflops = client.get_metric_history(r.info.run_id, f"{CURVES_SECTION}/ood_rule_success_rate_by_mflops")
        arm = r.data.tags.get(tracking.TAG_RUN, "sft")
        expected = [(0, AGREE[("init", "eval_ood_rule")])] + [
            (step, AGREE[(arm, "eval_ood_rule")]) for run, step, _ in CHECKPOINTS if run == arm
        ]
        assert sorted((m.step, round(m.value, 6)) for m in by_step) == expected
        gflops = [1.0] + [g for run, _, g in CHECKPOINTS if run == arm]
        assert sorted(m.step for m in by_mflops) == [round(1000 * g) for g in gflops]
    # the study's run keeps every claim row's verdict: (v) at equal compute and at equal steps under two keys
    study = next(
        r
        for r in client.search_runs([tracking.experiment_id(config, client)])
        if r.data.tags.get("sftvsrl.role") == "study"
    )
    v_tags = {k: v for k, v in study.data.tags.items() if k.startswith("sftvsrl.claim.gp_l.v.")}
    assert v_tags == {"sftvsrl.claim.gp_l.v.success_rate": HELD, "sftvsrl.claim.gp_l.v.success_rate.2": HELD}
    assert {"claim/gp_l/v/success_rate/diff_points", "claim/gp_l/v/success_rate/2/diff_points"} <= set(
        study.data.metrics
    )


def test_report_captions_render_with_the_default_config(tmp_path, monkeypatch):
    """Every figure of the report rule has a caption; Jinja + reStructuredText render without errors; the first
    page (workflow.rst) and the summary's caption show the verdicts table (results/verdicts.csv, as the rule
    writes it, read from where `snakemake --report` runs)."""
    import jinja2
    from docutils.core import publish_parts

    from sftvsrl.study import load_config

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "config" / "config.yaml")

    class Snakemake:
        pass

    class Output:
        claims = "results/claims.csv"
        verdicts = "results/verdicts.csv"

    monkeypatch.chdir(tmp_path)
    Path("results").mkdir()
    Path(Output.claims).write_text("task,claim,comparison,verdict\ngp_l,i,SFT step 24 - init on eval_id,held\n")
    Path(Output.verdicts).write_text(
        'task,#,paper\'s finding,metric,"ours: difference, points [95% CI]",p,units (episodes),verdict\n'
        'GP-L,\\(i),SFT raises ID success over init,success,"+37.0 [+30.1, +43.9]",< 0.001,101 hands (200),**held**\n'
    )
    Snakemake.config = config
    Snakemake.output = Output
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    from sftvsrl.names import FIGURES

    for name in [*FIGURES, "summary", "workflow"]:
        text = (root / "workflow" / "report" / f"{name}.rst").read_text()
        assert "Placeholder" not in text
        rendered = env.from_string(text).render(snakemake=Snakemake)
        html = publish_parts(rendered, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})
        assert len(html["body"]) > 300, name
        if name in ("summary", "workflow"):  # the claims table is shown, not linked
            assert "SFT raises ID success over init" in html["body"] and "<strong>held</strong>" in html["body"]
            assert "<td>(i)</td>" in html["body"]  # the claim's number, not an empty list
        if name in ("id_ood_vs_compute", "success_vs_step", "ood_change"):  # arms the default does not train
            assert "sft-varied" not in html["body"] and "grey cross" not in html["body"], name
    config["gp"]["varied_rules"]["rows"] = 16
    text = (root / "workflow" / "report" / "id_ood_vs_compute.rst").read_text()
    assert "sft-varied" in env.from_string(text).render(snakemake=Snakemake)  # a study that trains it says so


def test_report_writes_exactly_the_paths_it_is_given(tmp_path, tiny_config):
    """The rule names every output and every episode table; tables elsewhere than beside their eval are read."""
    import shutil

    from sftvsrl.cli import main
    from sftvsrl.evaluate import episodes_file
    from sftvsrl.names import FIGURES

    files = study_files(tmp_path / "results", AGREE, episodes=40)
    tables = []
    for i, f in enumerate(files):  # move each episode table away from its default place
        tables.append(str(tmp_path / "tables" / f"{i}.jsonl"))
        Path(tables[-1]).parent.mkdir(exist_ok=True)
        shutil.move(episodes_file(f), tables[-1])
    out = tmp_path / "named"
    figures = [str(out / "f" / f"{name}.png") for name in FIGURES]
    config = {"study": "t", "tasks": ["gp_l"], "gp": GP_SECTION}
    args = ["--evals", *files, "--episodes", *tables, "--paper", str(PAPER_FILE), "--figures", *figures]
    args += [
        "--summary-csv",
        str(out / "a.csv"),
        "--claims-csv",
        str(out / "b.csv"),
        "--summary-md",
        str(out / "c.md"),
        "--verdicts-csv",
        str(out / "d.csv"),
    ]
    paths = build_report(config, files, tmp_path / "unused", paper_file=PAPER_FILE, log_to_mlflow=False,
                         episode_files=tables)  # fmt: skip
    assert "no episode table" not in paths["summary_md"].read_text()
    from sftvsrl.report import ReportPaths

    assert main(["report", "--config", json.dumps(tiny_config), *args]) == 0
    assert all(Path(p).stat().st_size > 0 for p in [*figures, out / "a.csv", out / "b.csv", out / "c.md"])
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(["a.csv", "b.csv", "c.md", "d.csv", *(
        f"{n}.png" for n in FIGURES)])  # fmt: skip
    with pytest.raises(ValueError, match="once each"):
        ReportPaths.figure_paths([*figures, figures[0]])
    with pytest.raises(ValueError, match="once each"):
        ReportPaths.figure_paths([str(out / "f" / "not_a_figure.png")])
    with pytest.raises(SystemExit, match="--out-dir"):
        main(["report", "--config", json.dumps(config), "--evals", *files, "--summary-csv", "x.csv"])
    # without the tables the paired tests say what is missing
    bare = build_report(config, files, tmp_path / "bare", paper_file=PAPER_FILE, log_to_mlflow=False)
    assert "no episode table" in bare["summary_md"].read_text()


# --------------------------------------------------------------------------- image tasks: visual OOD, recognition
VL_SPLITS = ("eval_id", "eval_ood_rule", "eval_ood_visual")
VL_AGREE = {  # the paper's pattern: RL raises visual OOD and recognition, SFT lowers both
    **AGREE,
    ("base", "eval_ood_visual"): 0.0,
    ("init", "eval_ood_visual"): 0.30,
    ("sft", "eval_ood_visual"): 0.08,
    ("rl-v1", "eval_ood_visual"): 0.40,
    ("rl-v5", "eval_ood_visual"): 0.55,
    ("rl-nosft", "eval_ood_visual"): 0.0,
}
RECOGNISED_AGREE = {  # run -> (ID and rule OOD, visual OOD)
    "base": (0.0, 0.0),
    "init": (0.80, 0.60),
    "sft": (0.65, 0.30),
    "rl-v1": (0.85, 0.70),
    "rl-v5": (0.95, 0.85),
    "rl-nosft": (0.0, 0.0),
}
VL_CONTRADICT = {  # visual OOD: SFT up, RL down; recognition likewise
    **VL_AGREE,
    ("sft", "eval_ood_visual"): 0.60,
    ("rl-v1", "eval_ood_visual"): 0.20,
    ("rl-v5", "eval_ood_visual"): 0.05,
}
RECOGNISED_CONTRADICT = {**RECOGNISED_AGREE, "sft": (0.95, 0.90), "rl-v5": (0.50, 0.20)}
VL_CONFIG = {"study": "t", "tasks": ["gp_vl"], "gp_vl": GP_SECTION}


def vl_study_files(
    root: Path,
    scores: dict[tuple[str, str], float],
    recognised: dict[str, tuple[float, float]] | None,
    *,
    task: str = "gp_vl",
    splits=VL_SPLITS,
    episodes: int = 234,
    **kwargs,
) -> list[str]:
    """Eval files of an image task on `splits`; `recognised[run]`: recognition accuracy on ID and rule OOD,
    and on visual OOD (None: the task records none, as V-IRL-VL)."""
    files = []
    for run, step, gflops in CHECKPOINTS:
        for split in splits:
            rec = None if recognised is None else recognised[run][split == "eval_ood_visual"]
            path = write_eval(root, task, 0, run, step, split, scores[(run, split)], episodes=episodes,
                              gflops=gflops, format_error_rate=0.05, recognised=rec, **kwargs)  # fmt: skip
            files.append(str(path))
    return files


def claims_by(path: Path, task: str = "gp_vl") -> dict[tuple[str, str, str], dict[str, str]]:
    """(claim, metric, split of its comparison) -> claims.csv row."""
    return {
        (r["claim"], r["metric"], r["comparison"].rsplit(" on ", 1)[-1]): r
        for r in read_claims(path)
        if r["task"] == task
    }


VISUAL_CLAIMS = ("v1", "v2", "v3", "v4", "v5")


def test_vl_study_tests_the_visual_claims_in_the_paper_direction(tmp_path):
    out = report_of(tmp_path, vl_study_files(tmp_path / "results", VL_AGREE, RECOGNISED_AGREE), VL_CONFIG)
    by = claims_by(out["claims_csv"])
    assert {k for k, _, _ in by} == set(CLAIMS) | set(VISUAL_CLAIMS)
    v1 = by[("v1", "success_rate", "eval_ood_visual")]  # RL raises visual-OOD success: 70 -> 129 of 234
    assert v1["comparison"] == "RL, VIter 5 step 6 - init on eval_ood_visual"
    assert float(v1["diff"]) == pytest.approx((round(0.55 * 234) - round(0.30 * 234)) / 234, rel=1e-5)
    assert v1["paper_direction"] == "+" and v1["verdict"] == HELD and v1["test"] == "exact McNemar"
    v2 = by[("v2", "success_rate", "eval_ood_visual")]
    assert v2["comparison"] == "SFT step 10 - init on eval_ood_visual"
    assert v2["paper_direction"] == "-" and v2["verdict"] == HELD
    assert by[("v3", "success_rate", "eval_ood_visual")]["verdict"] == HELD
    assert by[("v3", "recognition_accuracy", "eval_ood_visual")]["verdict"] == HELD  # RL 85% vs SFT 30%
    for key, sign in (("v4", "+"), ("v5", "-")):  # recognition, on visual OOD and on ID
        for split in ("eval_ood_visual", "eval_id"):
            row = by[(key, "recognition_accuracy", split)]
            assert (row["paper_direction"], row["verdict"]) == (sign, HELD), (key, split)
    v5 = by[("v5", "recognition_accuracy", "eval_ood_visual")]
    assert float(v5["diff"]) == pytest.approx((round(0.30 * 234) - round(0.60 * 234)) / 234, rel=1e-5)
    # the rule-OOD claims of the image task are tested as the text task's are
    assert by[("ii", "success_rate", "eval_ood_rule")]["verdict"] == HELD

    md = out["summary_md"].read_text()
    claims_section = md.split("### Claims")[1].split("### Beside")[0]
    assert "| (v1) | RL raises visual-OOD episode success vs init |" in claims_section
    assert "(v2) SFT lowers visual-OOD episode success vs init.** Paper: init -> SFT: 23.6% -> 13.7% (-9.9" in md
    assert "init -> RL: 23.6% -> 41.2% (+17.6 points)" in md
    assert "RL 41.2% vs SFT 13.7% (+27.5 points)" in md
    visual = md.split("### Beside the paper: visual OOD (Figure 7), episode success")[1].split("###")[0]
    assert "| paper (11B) | 23.6 | 13.7 | 41.2 | -9.9 | +17.6 |" in visual
    low, high = wilson_interval(round(0.55 * 234), 234)
    assert f"| 55.0 [{100 * low:.1f}, {100 * high:.1f}] |" in visual  # RL: the rate the evaluation reports
    # recognition accuracy per checkpoint and split; its interval: the pooled share's, clustered by hand
    recognition = md.split("### Recognition accuracy (Figure 8)")[1].split("###")[0]
    assert "| run | step | GFLOPs | in-distribution (ID) | rule OOD | visual OOD |" in recognition
    r = round(0.6 * 234) / 234  # init on visual OOD, one attempt per episode, 234 distinct hands
    se = (r * (1 - r) / 233) ** 0.5
    init = next(line for line in recognition.splitlines() if line.startswith("| init | 0 | 1 |"))
    assert init.endswith(f"| {100 * r:.1f} [{100 * (r - 1.96 * se):.1f}, {100 * (r + 1.96 * se):.1f}] |")
    assert "| rl-v5 | 3 | 1.6 | 94.9 [" in recognition  # round(0.95 * 234) = 222 of 234
    assert "eval_ood_visual 234 episodes over 234 distinct hands" in md

    with open(out["summary_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    visual_rows = [r for r in rows if r["split"] == "eval_ood_visual"]
    assert len(visual_rows) == len(CHECKPOINTS) and len(rows) == 3 * len(CHECKPOINTS)
    sft = next(r for r in visual_rows if r["run"] == "sft" and r["step"] == "10")
    assert float(sft["recognition_accuracy"]) == pytest.approx(0.30)
    assert float(sft["success_rate"]) == pytest.approx(0.08)

    _assert_real_png(out["recognition_vs_compute"])
    text_only = report_of(tmp_path / "text", study_files(tmp_path / "text" / "results", AGREE))
    assert "recognition_vs_compute" not in text_only  # Figure 8 only where an image task is
    _assert_real_png(out["recognition_vs_compute"])
    assert not any(r["claim"] in VISUAL_CLAIMS for r in read_claims(text_only["claims_csv"]))
    assert "visual OOD" not in text_only["summary_md"].read_text()


def test_vl_verdicts_follow_the_episodes_when_they_contradict_the_paper(tmp_path):
    out = report_of(tmp_path, vl_study_files(tmp_path / "results", VL_CONTRADICT, RECOGNISED_CONTRADICT), VL_CONFIG)
    by = claims_by(out["claims_csv"])
    for key in ("v1", "v2", "v3"):
        assert by[(key, "success_rate", "eval_ood_visual")]["verdict"] == NOT_HELD, key
    for key in ("v4", "v5"):
        assert by[(key, "recognition_accuracy", "eval_ood_visual")]["verdict"] == NOT_HELD, key
    assert "The paper's finding **did not hold** in this run" in out["summary_md"].read_text()


def test_vl_claims_are_inconclusive_with_few_episodes(tmp_path):
    close = {**VL_AGREE, ("sft", "eval_ood_visual"): 0.25, ("rl-v5", "eval_ood_visual"): 0.35}
    recognised = {**RECOGNISED_AGREE, "sft": (0.75, 0.55), "rl-v5": (0.85, 0.65)}
    out = report_of(tmp_path, vl_study_files(tmp_path / "results", close, recognised, episodes=20), VL_CONFIG)
    by = claims_by(out["claims_csv"])
    for key, metric in (("v1", "success_rate"), ("v2", "success_rate"), ("v3", "success_rate"),
                        ("v4", "recognition_accuracy"), ("v5", "recognition_accuracy")):  # fmt: skip
        row = by[(key, metric, "eval_ood_visual")]
        assert row["verdict"] == INCONCLUSIVE, key
        assert int(row["episodes"]) == 20 and float(row["p_value"]) >= 0.05


def test_vl_study_without_the_visual_split_leaves_the_visual_claims_not_tested(tmp_path):
    files = vl_study_files(tmp_path / "results", VL_AGREE, RECOGNISED_AGREE, splits=("eval_id", "eval_ood_rule"))
    out = report_of(tmp_path, files, VL_CONFIG)
    rows = [r for r in read_claims(out["claims_csv"]) if r["claim"] in VISUAL_CLAIMS]
    visual = [r for r in rows if r["comparison"] == ""]
    assert {r["claim"] for r in visual} == set(VISUAL_CLAIMS)
    assert {r["verdict"] for r in visual} == {NOT_TESTED}
    assert all("eval_ood_visual" in r["note"] for r in visual)
    # recognition on ID is still tested; Figure 8 draws the ID panel and says the visual one has no data
    assert next(r for r in rows if r["claim"] == "v4" and r["comparison"].endswith("eval_id"))["verdict"] == HELD
    _assert_real_png(out["recognition_vs_compute"])


def test_virl_vl_visual_claims_use_route_success_and_make_no_recognition_claims(tmp_path):
    scores = {k: v for k, v in VL_AGREE.items()}
    files = vl_study_files(tmp_path / "results", scores, None, task="virl_vl", episodes=18)
    out = report_of(tmp_path, files, {"study": "t", "tasks": ["virl_vl"]})
    rows = [r for r in read_claims(out["claims_csv"]) if r["claim"] in VISUAL_CLAIMS]
    assert {r["claim"] for r in rows} == {"v1", "v2", "v3"}
    assert {r["metric"] for r in rows} == {"success_rate"}
    md = out["summary_md"].read_text()
    assert "RL raises visual-OOD route success vs init" in md
    assert "init -> RL: 16.7% -> 77.8% (+61.1 points); the previous best: 44.0%" in md
    assert "### Recognition accuracy" not in md
    _assert_real_png(out["recognition_vs_compute"])


def test_recognition_counts_come_from_attempt_flags_or_the_episode_share():
    from sftvsrl.report.claims import episode_ratios, task_ratios

    ratios = task_ratios("gp_vl")  # GP-VL says where its recognition accuracy is: the attempts' cards_correct
    flagged = {"success": False, "attempts": [{"info": {"cards_correct": c}} for c in (True, False, True)]}
    assert episode_ratios(flagged, ratios)["recognition_accuracy"] == (2.0, 3.0)
    shared = {"success": False, "num_attempts": 4, "attempts": [], "metrics": {"recognition_accuracy": 0.25}}
    assert episode_ratios(shared, ratios)["recognition_accuracy"] == (1.0, 4.0)
    assert "recognition_accuracy" not in episode_ratios({"success": True, "attempts": [{"info": {}}]}, ratios)


def test_the_report_reads_what_the_task_says_of_its_episodes():
    """The resampling unit, the paired rates and the rule-OOD diagnostics come from the task: GP's hand (any
    order of cards), V-IRL's per-step counts, a task that says nothing pairs success by row."""
    from sftvsrl.report.claims import episode_ratios, task_ratios, unit_of
    from sftvsrl.report.results import task_diagnostics

    gp = {"id": 3, "row": {"hand": {"cards": ["K", "2", "5"]}}, "success": True, "attempts": []}
    assert unit_of(gp, "gp_l") == unit_of({**gp, "id": 9, "row": {"hand": {"cards": ["5", "K", "2"]}}}, "gp_l")
    assert unit_of(gp, "virl_l") == ("row", "3")
    route = {"id": 1, "success": False, "attempts": [{}] * 4,
             "metrics": {"correct_actions": 3, "attempts": 4, "absolute_turns": 1, "turn_attempts": 2}}  # fmt: skip
    assert episode_ratios(route, task_ratios("virl_l")) == {
        "success_rate": (0.0, 1.0),
        "mean_reward_per_attempt": (0.0, 4.0),
        "per_step_accuracy": (3.0, 4.0),
        "absolute_turn_rate": (1.0, 2.0),
    }
    assert "per_step_accuracy" not in episode_ratios(route, task_ratios("gp_l"))
    assert task_diagnostics("virl_l") == {"absolute_turn_rate": -1}
    assert task_diagnostics("gp_l") == {"rule_memorisation_rate": -1, "number_accuracy": +1}


def test_each_task_titles_and_orders_its_own_metrics():
    """The report's titles and summary.csv's column order of the tasks' own metrics come from the tasks: a task's
    scores, format errors, its rule-OOD diagnostics, then the generic metrics."""
    from sftvsrl.report.results import diagnostic_columns, metric_columns, metric_title

    assert [metric_title(m, "virl_l") for m in ("per_step_accuracy", "absolute_turn_rate", "format_error_rate")] == [
        "per-step accuracy",
        "absolute turns (rule memorisation)",
        "format error",
    ]
    assert metric_title("absolute_turn_rate", "gp_l") == "absolute_turn_rate"  # GP does not title V-IRL's metrics
    assert metric_columns(["gp_l"])[:5] == [
        "format_error_rate",
        "rule_memorisation_rate",
        "rule_memorisation_rate_se",
        "value_use_rate",
        "value_use_rate_se",
    ]
    virl = [c for c in metric_columns(["virl_l"]) if not c.endswith("_se")]
    assert virl == [
        "per_step_accuracy",
        "route_success_rate",
        "format_error_rate",
        "absolute_turn_rate",
        "intersection_hallucination_rate",
        "recognition_accuracy",
        "mean_attempts",
        "mean_reward_per_attempt",
    ]
    assert diagnostic_columns("gp_l") == [
        "format_error_rate",
        "rule_memorisation_rate",
        "value_use_rate",
        "number_accuracy",
        "mean_reward_per_attempt",
    ]


@pytest.mark.parametrize("after, verdict", [(0.30, HELD), (0.0, NOT_HELD)])
def test_rl_from_an_sft_checkpoint_is_paired_with_that_checkpoint(tmp_path, after, verdict):
    """Claim (viii) of arXiv 2509.12235: RL from the latest SFT start (rl.starts) against that SFT checkpoint
    on rule OOD, in each direction; the report names the runs by what they started from, and draws them."""
    files = study_files(tmp_path / "results", AGREE)
    for step, gflops in ((3, 3.3), (6, 3.6)):
        for split, p in (("eval_id", 0.5), ("eval_ood_rule", after)):
            path = write_eval(
                tmp_path / "results", "gp_l", 0, "rl-v5-sft20", step, split, p,
                episodes=234, gflops=gflops, memorised=0.1, train_start="sft-20",
            )  # fmt: skip
            files.append(str(path))
    config = {"study": "t", "tasks": ["gp_l"], "gp": GP_SECTION, "rl": {"starts": ["init", "sft-20"]}}
    out = report_of(tmp_path, files, config)
    by = {(r["claim"], r["metric"]): r for r in read_claims(out["claims_csv"])}
    viii = by[("viii", "success_rate")]
    assert viii["comparison"] == "RL from SFT step 20, VIter 5 step 6 - SFT step 20 on eval_ood_rule"
    assert viii["verdict"] == verdict
    assert ("viii", "rule_memorisation_rate") in by  # with the diagnostics
    # the runs from init stay the RL arm: (iii) still compares RL, VIter 5 with init
    assert by[("iii", "success_rate")]["comparison"].startswith("RL, VIter 5 step")
    _assert_real_png(out["rl_from_sft"])


def test_a_study_without_rl_from_sft_checkpoints_makes_no_restore_claim(tmp_path):
    out = report_of(tmp_path, study_files(tmp_path / "results", AGREE))
    assert "viii" not in {r["claim"] for r in read_claims(out["claims_csv"])}
    assert "rl_from_sft" not in out  # no figure of a condition the study did not run
