"""The report stage on constructed eval files: table rows, standard errors, equal-compute picks,
figures that are really drawn, and verdicts that follow the numbers."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from sftvsrl import report
from sftvsrl.report import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    binomial_se,
    build_report,
    combined_se,
    equal_compute_steps,
    load_evals,
    seed_points,
    verdict,
)

PAPER_FILE = Path(__file__).resolve().parents[1] / "config" / "paper_results.yaml"  # copy of shared/


def write_eval(root: Path, task: str, seed: int, run: str, step: int, split: str, p: float, *,
               episodes: int = 100, gflops: float = 0.0, n_params: int = 135_000_000, **extra) -> Path:
    """An eval JSON in the shape `sftvsrl.evaluate` writes."""
    path = root / task / f"seed{seed}" / "eval" / run / f"ckpt-{step}" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"episodes": episodes, "success_rate": p, "success_se": binomial_se(p, episodes), **extra}
    path.write_text(json.dumps({
        "task": task, "seed": seed, "run": run, "step": step, "split": split, "viter": 5,
        "temperature": 0.7, "episodes": episodes,
        "compute": {"n_params": n_params, "flops": gflops * 1e9, "gflops": gflops},
        "metrics": metrics,
    }))
    return path


# (run, step, gflops) of a small study: init at 1 GFLOP, SFT and RL add compute from there.
CHECKPOINTS = [
    ("base", 0, 0.0), ("init", 0, 1.0),
    ("sft", 10, 1.5), ("sft", 20, 3.0),
    ("rl-v1", 3, 1.3), ("rl-v1", 6, 1.8),
    ("rl-v5", 3, 1.6), ("rl-v5", 6, 2.2),
    ("rl-nosft", 3, 0.4), ("rl-nosft", 6, 0.9),
]


def study_files(root: Path, scores: dict[tuple[str, str], float], *, seeds=(0,), episodes=234,
                n_params=135_000_000) -> list[str]:
    """Eval files for every checkpoint; `scores[(run, split)]` is the success at every step of that run."""
    files = []
    for seed in seeds:
        for run, step, gflops in CHECKPOINTS:
            for split in ("eval_id", "eval_ood_rule"):
                p = scores[(run, split)]
                fmt = 1.0 if run in ("base", "rl-nosft") else 0.05
                mem = 0.3 if run == "sft" else 0.1
                files.append(str(write_eval(root, "gp_l", seed, run, step, split, p, episodes=episodes,
                                            gflops=gflops, n_params=n_params, format_error_rate=fmt,
                                            rule_memorisation_rate=mem if split == "eval_ood_rule" else 0.0)))
    return files


AGREE = {  # the paper's pattern, strongly
    ("base", "eval_id"): 0.0, ("base", "eval_ood_rule"): 0.0,
    ("init", "eval_id"): 0.30, ("init", "eval_ood_rule"): 0.30,
    ("sft", "eval_id"): 0.60, ("sft", "eval_ood_rule"): 0.05,
    ("rl-v1", "eval_id"): 0.40, ("rl-v1", "eval_ood_rule"): 0.34,
    ("rl-v5", "eval_id"): 0.50, ("rl-v5", "eval_ood_rule"): 0.50,
    ("rl-nosft", "eval_id"): 0.0, ("rl-nosft", "eval_ood_rule"): 0.0,
}
CONTRADICT = {  # SFT OOD up strongly, RL OOD down strongly, SFT ID down, VIter hurts, no-SFT RL works
    ("base", "eval_id"): 0.0, ("base", "eval_ood_rule"): 0.0,
    ("init", "eval_id"): 0.30, ("init", "eval_ood_rule"): 0.30,
    ("sft", "eval_id"): 0.10, ("sft", "eval_ood_rule"): 0.60,
    ("rl-v1", "eval_id"): 0.40, ("rl-v1", "eval_ood_rule"): 0.25,
    ("rl-v5", "eval_id"): 0.20, ("rl-v5", "eval_ood_rule"): 0.05,
    ("rl-nosft", "eval_id"): 0.40, ("rl-nosft", "eval_ood_rule"): 0.30,
}


def claim_verdicts(md: str) -> dict[str, str]:
    """Claim key -> verdict from the claims table of summary.md."""
    out = {}
    for line in md.splitlines():
        m = re.match(r"\| \((i|ii|iii|iv|v|vi)\) \|.*\| \*\*(.+?)\*\* \|$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


# --------------------------------------------------------------------------- statistics
def test_binomial_standard_error():
    assert binomial_se(0.25, 100) == pytest.approx(0.0433, abs=5e-5)
    assert binomial_se(0.5, 234) == pytest.approx(math.sqrt(0.25 / 234))
    assert binomial_se(0.0, 24) == 0.0
    assert math.isnan(binomial_se(0.5, 0))
    assert combined_se(0.03, 0.04) == pytest.approx(0.05)


def test_verdict_rule():
    assert verdict(0.10, 0.05, +1) == HELD
    assert verdict(-0.10, 0.05, -1) == HELD
    assert verdict(-0.10, 0.05, +1) == NOT_HELD
    assert verdict(0.04, 0.05, +1) == INCONCLUSIVE
    assert verdict(-0.04, 0.05, +1) == INCONCLUSIVE
    assert verdict(0.05, 0.05, +1) == HELD  # exactly 1 SE counts
    assert verdict(0.0, 0.0, +1) == INCONCLUSIVE


# --------------------------------------------------------------------------- aggregation
def test_summary_csv_rows_and_values(tmp_path):
    files = study_files(tmp_path / "results", AGREE)
    out = build_report({"study": "t", "tasks": ["gp_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    with open(out["summary_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CHECKPOINTS) * 2
    assert {"task", "seed", "run", "step", "split", "gflops", "success_rate", "success_se",
            "format_error_rate", "rule_memorisation_rate"} <= set(rows[0])
    # runs in study order: base, init, sft, rl-v1, rl-v5, rl-nosft
    order = list(dict.fromkeys(r["run"] for r in rows))
    assert order == ["base", "init", "sft", "rl-v1", "rl-v5", "rl-nosft"]
    row = next(r for r in rows if r["run"] == "sft" and r["step"] == "20" and r["split"] == "eval_ood_rule")
    assert float(row["success_rate"]) == pytest.approx(0.05)
    assert float(row["success_se"]) == pytest.approx(math.sqrt(0.05 * 0.95 / 234), rel=1e-4)
    assert float(row["gflops"]) == pytest.approx(3.0)
    assert float(row["rule_memorisation_rate"]) == pytest.approx(0.3)
    assert row["train_viter"] == ""
    rl = next(r for r in rows if r["run"] == "rl-v5" and r["step"] == "6" and r["split"] == "eval_id")
    assert float(rl["train_viter"]) == 5 and float(rl["success_rate"]) == pytest.approx(0.5)


def test_missing_se_is_filled_and_duplicates_rejected(tmp_path):
    path = write_eval(tmp_path, "gp_l", 0, "init", 0, "eval_id", 0.25)
    data = json.loads(path.read_text())
    del data["metrics"]["success_se"]
    path.write_text(json.dumps(data))
    df = load_evals([path])
    assert df.loc[0, "success_se"] == pytest.approx(0.0433, abs=5e-5)
    with pytest.raises(ValueError, match="same"):
        load_evals([path, path])


def test_seed_mean_uses_across_seed_standard_error(tmp_path):
    files = [write_eval(tmp_path, "gp_l", s, "init", 0, "eval_id", p) for s, p in ((0, 0.2), (1, 0.4), (2, 0.3))]
    pts = seed_points(load_evals(files))
    p = pts[("gp_l", "init", 0, "eval_id")]
    assert p.value == pytest.approx(0.3)
    assert p.se == pytest.approx(0.1 / math.sqrt(3))  # std (ddof 1) of 0.2, 0.4, 0.3 is 0.1
    assert p.n_seeds == 3


def test_equal_compute_picks_the_checkpoint_closest_to_the_common_budget(tmp_path):
    files = study_files(tmp_path, AGREE)
    pts = seed_points(load_evals(files))
    sel = equal_compute_steps(pts, "gp_l", ["sft", "rl-v1", "rl-v5"])
    # largest compute: sft 3.0, rl-v1 1.8, rl-v5 2.2 -> budget 1.8; closest: sft 1.5, rl-v1 1.8, rl-v5 1.6
    assert sel.budget == pytest.approx(1.8)
    assert sel.steps == {"sft": 10, "rl-v1": 6, "rl-v5": 3}


def test_virl_uses_per_step_accuracy(tmp_path):
    f1 = write_eval(tmp_path, "virl_l", 0, "init", 0, "eval_ood_rule", 0.1, per_step_accuracy=0.8,
                    per_step_accuracy_se=0.02)
    pts = seed_points(load_evals([f1]))
    p = pts[("virl_l", "init", 0, "eval_ood_rule")]
    assert (p.value, p.se) == (pytest.approx(0.8), pytest.approx(0.02))


# --------------------------------------------------------------------------- figures
def _assert_real_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 10_000, (path, len(data))
    with Image.open(path) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 50, (path, len(colours or []))


def test_every_figure_is_drawn(tmp_path):
    files = study_files(tmp_path / "results", AGREE, seeds=(0, 1))
    out = build_report({"study": "t", "tasks": ["gp_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    names = {"id_ood_vs_compute", "ood_change", "viter_ablation", "rl_nosft"}
    assert names <= set(out)
    for name in names:
        assert out[name] == tmp_path / "out" / "figures" / f"{name}.png"
        _assert_real_png(out[name])


def test_figures_are_not_empty_when_runs_are_missing(tmp_path):
    """Only init was evaluated: every figure still exists and says what is missing."""
    files = [write_eval(tmp_path, "gp_l", 0, "init", 0, s, 0.2, gflops=1.0) for s in ("eval_id", "eval_ood_rule")]
    out = build_report({"study": "t", "tasks": ["gp_l", "virl_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    for name in ("id_ood_vs_compute", "ood_change", "viter_ablation", "rl_nosft"):
        _assert_real_png(out[name])
    md = out["summary_md"].read_text()
    assert "not tested" in md


# --------------------------------------------------------------------------- summary.md verdicts
def test_summary_says_held_when_numbers_agree_with_the_paper(tmp_path):
    files = study_files(tmp_path / "results", AGREE)
    out = build_report({"study": "t", "tasks": ["gp_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    md = out["summary_md"].read_text()
    assert claim_verdicts(md) == {k: HELD for k in ("i", "ii", "iii", "iv", "v", "vi")}
    assert "did not hold" not in md.split("### Claims")[1].split("### Beside")[0]
    # the paper's numbers stand beside ours
    assert "11.5" in md and "3.4" in md and "15.0" in md and "+2.99" in md
    # equal compute: sft step 10 vs rl-v5 step 3 (budget 1.8 GFLOPs); init OOD 30% -> SFT 5%
    assert "SFT step 10" in md and "RL, VIter 5 step 3" in md
    assert "-25.0" in md
    # diagnostics table: rule memorisation and format error columns
    assert "rule memorisation" in md and "format error" in md
    assert "toy run" in md  # 135M parameters


def test_summary_says_did_not_hold_when_numbers_contradict_the_paper(tmp_path):
    files = study_files(tmp_path / "results", CONTRADICT)
    out = build_report({"study": "t", "tasks": ["gp_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    md = out["summary_md"].read_text()
    assert claim_verdicts(md) == {k: NOT_HELD for k in ("i", "ii", "iii", "iv", "v", "vi")}
    assert "The paper's finding **did not hold** in this run" in md


def test_summary_says_inconclusive_within_one_standard_error(tmp_path):
    close = dict(AGREE)
    close.update({("sft", "eval_ood_rule"): 0.29, ("rl-v5", "eval_ood_rule"): 0.31, ("sft", "eval_id"): 0.31})
    files = study_files(tmp_path / "results", close, episodes=24)
    out = build_report({"study": "t", "tasks": ["gp_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    verdicts = claim_verdicts(out["summary_md"].read_text())
    assert verdicts["i"] == verdicts["ii"] == verdicts["iii"] == verdicts["iv"] == INCONCLUSIVE


def test_no_toy_caveat_for_a_large_model_and_many_episodes(tmp_path):
    files = study_files(tmp_path / "results", AGREE, n_params=11_000_000_000)
    out = build_report({"study": "t", "tasks": ["gp_l"]}, files, tmp_path / "out", paper_file=PAPER_FILE,
                       log_to_mlflow=False)
    assert "toy run" not in out["summary_md"].read_text()


def test_builtin_paper_numbers_match_the_shared_file():
    import yaml

    shared = yaml.safe_load(PAPER_FILE.read_text())
    for key in ("rule_ood", "verification_ablation", "rl_without_sft"):
        for task, numbers in report.PAPER_DEFAULT[key].items():
            assert shared[key][task] == numbers


# --------------------------------------------------------------------------- MLflow + CLI
def test_report_through_the_cli_logs_to_the_study_run(tmp_path, tiny_config):
    pytest.importorskip("sftvsrl.tracking")
    import mlflow

    from sftvsrl.cli import main
    from sftvsrl.tracking import ensure_study_run

    files = study_files(tmp_path / "results", AGREE)
    out_dir = tmp_path / "out"
    rc = main(["report", "--config", json.dumps(tiny_config), "--evals", *files, "--out-dir", str(out_dir),
               "--paper", str(PAPER_FILE)])
    assert rc == 0
    assert (out_dir / "summary.csv").exists() and (out_dir / "summary.md").exists()
    run_id = ensure_study_run(tiny_config)
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    logged |= {a.path for a in client.list_artifacts(run_id, "report/figures")}
    assert {"report/summary.md", "report/summary.csv", "report/figures/ood_change.png"} <= logged


def test_seed_mean_standard_error_is_floored_at_the_evaluation_noise(tmp_path):
    """Two seeds that agree by chance do not make the estimate exact."""
    files = [write_eval(tmp_path, "gp_l", s, "init", 0, "eval_id", 0.25) for s in (0, 1)]
    p = seed_points(load_evals(files))[("gp_l", "init", 0, "eval_id")]
    assert p.se == pytest.approx(binomial_se(0.25, 100) / math.sqrt(2))


def test_report_captions_render_with_the_default_config():
    """Every figure of the report rule has a caption; Jinja + reStructuredText render without errors."""
    import jinja2
    from docutils.core import publish_parts

    from sftvsrl.config import load_config

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "config" / "config.yaml")

    class Snakemake:
        pass

    Snakemake.config = config
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    names = ["id_ood_vs_compute", "ood_change", "viter_ablation", "rl_nosft", "summary", "workflow"]
    for name in names:
        text = (root / "workflow" / "report" / f"{name}.rst").read_text()
        assert "Placeholder" not in text
        rendered = env.from_string(text).render(snakemake=Snakemake)
        html = publish_parts(rendered, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})
        assert len(html["body"]) > 300, name
