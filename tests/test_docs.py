"""The documentation states what is true now: a short README whose numbers cannot go stale, no dated diary
headings, and links that resolve.

The README links results (docs/results*.md, generated from named runs) rather than copying them, so it holds no
results table and no measured time; history lives in git, so no heading in README.md or docs/ is dated or names
an internal issue or stop.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

MAX_README_LINES = 200

# A result in a table row: a percentage, a p-value, a signed interval "[+1.5, +12.4]", a verdict, or a measured
# time ("27 min", "3.5 h", "38 min 58 s", "38:58").
RESULT = re.compile(
    r"\d%"
    r"|\bp\s*[=<>]\s*0?\.\d"
    r"|\[[+-]\d[\d.]*,\s*[+-]\d[\d.]*\]"
    r"|\*\*(held|did not hold|inconclusive)\*\*"
    r"|\b\d+(\.\d+)?\s*(min|minutes|h|hours?|s)\b"
    r"|\b\d+:\d\d\b"
)
# A measured time anywhere in the README's prose: the run it came from would have to be named, so it belongs in a
# generated doc or docs/performance.md.
DURATION = re.compile(r"\b\d+(\.\d+)?\s*(min|minutes|hours?)\b|\b\d+ min \d+ s\b")
DATED_HEADING = re.compile(r"\d{4}-\d{2}-\d{2}|\b(issue|stop)\s*#?\d+\b|\bstep \d+ of the work\b", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# What the checks guard against, in the shape the README once had: a diary heading, a results table, a config row
# with a measured time, a time in prose.
STALE_README = (
    "## Results (2026-11-30, stop 4)",
    "| claim | ours | p | verdict |",
    "|---|---|---|---|",
    "| (vii) RL raises ID | +12.5 [+5.6, +19.7] | 0.0012 | **held** |",
    "| `config/virl.yaml` | V-IRL-L | laptop CPU, 56 min on a 2-core Intel Xeon |",
    "On a fresh clone it took 38 min 58 s.",
    "```bash",
    "# step 3 in a code block is not a heading",
    "```",
)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def results_rows(text: str) -> list[str]:
    """Table rows of a Markdown text that hold a result."""
    return [f"{n}: {line}" for n, line in prose_lines(text) if line.lstrip().startswith("|") and RESULT.search(line)]


def durations(text: str) -> list[str]:
    return [f"{n}: {line}" for n, line in prose_lines(text) if DURATION.search(line)]


def dated_headings(text: str) -> list[str]:
    return [f"{n}: {line}" for n, line in prose_lines(text) if line.startswith("#") and DATED_HEADING.search(line)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for n, line in prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{n}: {target}")
    return broken


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_has_no_results_table():
    rows = results_rows(README.read_text())
    assert not rows, "README.md copies results (link the generated docs/results*.md instead):\n" + "\n".join(rows)


def test_readme_states_no_measured_time():
    found = durations(README.read_text())
    assert not found, "README.md states a measured time (link docs/performance.md instead):\n" + "\n".join(found)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_dated_headings(path):
    found = dated_headings(path.read_text())
    assert not found, f"{path.name} has dated or step-numbered headings:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "path", [README, ROOT / "config" / "README.md", *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_relative_links_resolve(path):
    broken = broken_links(path)
    assert not broken, f"{path.name} links to files that do not exist:\n" + "\n".join(broken)


def test_rules_catch_the_old_readme():
    """The checks above fail on what they guard against: a README with a results table, a time and a diary heading."""
    old = "\n".join(STALE_README)
    assert len(results_rows(old)) == 2
    assert len(durations(old)) == 2
    assert dated_headings(old) == ["1: ## Results (2026-11-30, stop 4)"]
    assert dated_headings("### Step 3 of the work\n## Issue #12") == ["1: ### Step 3 of the work", "2: ## Issue #12"]
    assert not dated_headings("## The RL curve to 24 steps\n### A less-sharpened init: RL from 16 SFT steps")


def test_results_page_carries_the_verdicts_and_the_seed_table_of_a_real_report(tmp_path):
    """docs/make_results.py on a three-seed study's report: the verdicts table, the seed-by-seed table as the
    summary has it, and each figure asked for, copied and linked under its caption's title."""
    import subprocess
    import sys

    from sftvsrl.report import build_report
    from test_report import AGREE, CONTRADICT, PAPER_FILE, study_files

    study = tmp_path / "study"
    files = [f for seed, s in enumerate((AGREE, AGREE, CONTRADICT)) for f in study_files(study, s, seeds=(seed,))]
    config = {"study": "t", "tasks": ["gp_l"], "gp": {"num_cards": 4, "target": 24}}
    build_report(config, files, study / "results", paper_file=PAPER_FILE, log_to_mlflow=False)
    (tmp_path / "docs" / "images").mkdir(parents=True)
    out = tmp_path / "docs" / "results-x.md"
    args = ["--commit", "abc1234", "--machine", "m", "--command", "c", "--time", "1 min", "--out", str(out)]
    args += ["--figure", "id_ood_vs_compute", "--figure", "viter_ablation"]
    subprocess.run([sys.executable, str(ROOT / "docs" / "make_results.py"), str(study), *args], check=True)
    page, summary = out.read_text(), (study / "results" / "summary.md").read_text()
    seed_rows = [line for line in summary.split("### Seed by seed")[1].splitlines() if line.startswith("| (")]
    assert seed_rows and "## Seed by seed" in page
    assert all(row in page for row in seed_rows)
    assert "| (v) |" in page and "\\(" not in page and "abc1234" in page
    for name, title in (("id_ood_vs_compute", "ID and OOD score"), ("viter_ablation", "OOD gain against the")):
        assert (tmp_path / "docs" / "images" / f"results-x_{name}.png").stat().st_size > 0
        assert f"](images/results-x_{name}.png)" in page and f"![{title}" in page


def test_arm_curves_pair_every_rl_checkpoint_with_its_seeds_init(tmp_path):
    """docs/arm_curves.py on a two-seed study: a row per seed and pooled for init and each RL-from-init checkpoint,
    each with its rate and its paired difference from init (RL VIter 1 at 40% against init at 30%)."""
    import subprocess
    import sys

    from test_report import AGREE, study_files

    study_files(tmp_path / "results", AGREE, seeds=(0, 1))
    script = ROOT / "docs" / "arm_curves.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True, text=True)
    rows = [line.split(" | ") for line in out.stdout.splitlines()[2:]]
    assert [(r[0].strip("| "), r[1], r[2]) for r in rows] == [
        (seed, run, step)
        for seed in ("0", "1", "all")
        for run, step in (("init", "0"), ("rl-v1", "3"), ("rl-v1", "6"), ("rl-v5", "3"), ("rl-v5", "6"))
    ]
    v1 = [r for r in rows if r[1] == "rl-v1"]
    # the episode tables round each rate to whole episodes of 234: about +10 points, its interval excluding 0
    assert all(r[3] == "40.0" and abs(float(r[4].split()[0]) - 10) < 0.5 and "p =" not in r[4] for r in v1)
