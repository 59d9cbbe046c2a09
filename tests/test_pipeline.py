"""The whole study through Snakemake with real jobs: data, DVC, base model, SFT init, SFT,
RL per VIter, RL without SFT, evaluation of every checkpoint, report. The configs are the test
studies a user runs too (config/test/<task>.yaml); their base model is the tiny random one the
base-model rule builds offline (`model.base: tiny-random`), so a run takes minutes."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import merged_config
from sftvsrl.report import study_figures
from sftvsrl.report.publish import CLAIM_TAG, CURVES_SECTION, claim_keys
from sftvsrl.tasks import get_task
from test_report import claim_verdicts

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIG: dict[Path, Path] = {}  # study folder -> the config file it runs with


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # mlflow.set_tracking_uri in earlier tests exports MLFLOW_TRACKING_URI: the jobs must use
    # the study's own store, as on a fresh shell
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(STUDY_CONFIG[workdir]),
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=3600,  # a hang guard only: a whole study on a slow or shared machine; CI stops at 90 min anyway
        env=env,
    )


# the image tasks' studies: their base model is the tiny random LLaVA (`model.base: tiny-random-vl`)
@pytest.fixture(scope="module", params=["gp_l", "virl_l", "gp_vl", "virl_vl"])
def study(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"study-{request.param}")
    shutil.copytree(ROOT / "config", workdir / "config")
    STUDY_CONFIG[workdir] = workdir / "config" / "test" / f"{request.param}.yaml"
    result = run_snakemake(workdir, "--cores", "2")
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in (workdir / "logs").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{result.stderr[-4000:]}\n{logs[-8000:]}")
    return workdir


def study_splits(study) -> set[str]:
    """Its eval splits: ID and rule OOD, visual OOD for an image task, and (GP-L's config) the harder OOD splits."""
    config = yaml.safe_load(STUDY_CONFIG[study].read_text())
    image = config["tasks"] in (["gp_vl"], ["virl_vl"])
    harder = {f"eval_ood_{name}" for name in config.get("gp", {}).get("ood_splits", [])}
    return {"eval_id", "eval_ood_rule"} | ({"eval_ood_visual"} if image else set()) | harder


def study_checkpoints(study) -> set[tuple[str, int]]:
    """The evaluated checkpoints of a test study: each of its RL runs at step 1, from init and (GP-L's
    config) from the SFT arm's step-1 checkpoint too, and (GP-L's) SFT on varied rules at steps 1 and 2."""
    config = yaml.safe_load(STUDY_CONFIG[study].read_text())
    starts = config["rl"].get("starts", ["init"])
    from_sft = {(f"rl-v{v}-sft{s.split('-')[1]}", 1) for s in starts if s != "init" for v in (1, 2)}
    varied = {("sft-varied", 1), ("sft-varied", 2)} if config.get("gp", {}).get("varied_rules") else set()
    own = {("base", 0), ("init", 0), ("sft", 1), ("sft", 2), ("rl-v1", 1), ("rl-v2", 1), ("rl-nosft", 1)}
    return own | from_sft | varied


def test_study_produces_the_report(study):
    rows = list(csv.DictReader((study / "results" / "summary.csv").open()))
    runs = {(r["run"], int(r["step"])) for r in rows}
    assert runs == study_checkpoints(study)
    splits = study_splits(study)
    assert {r["split"] for r in rows} == splits
    assert len(rows) == len(study_checkpoints(study)) * len(splits)
    config = merged_config(STUDY_CONFIG[study])
    assert sorted(p.stem for p in (study / "results" / "figures").iterdir()) == sorted(study_figures(config))
    for name in ("id_ood_vs_compute", "ood_change", "viter_ablation", "rl_nosft"):
        assert (study / "results" / "figures" / f"{name}.png").stat().st_size > 10_000
    summary = (study / "results" / "summary.md").read_text()
    assert set(claim_verdicts(summary)) >= {"i", "ii", "iii", "iv"}  # SFT and RL each against init and each other
    task = rows[0]["task"]
    if task == "gp_vl":  # images: visual OOD and recognition accuracy beside the paper's GP-VL numbers
        assert "| (v1) |" in summary and "| paper (11B) | 23.6 | 13.7 | 41.2 | -9.9 | +17.6 |" in summary
        assert "### Recognition accuracy (Figure 8)" in summary
        assert all(r["recognition_accuracy"] != "" for r in rows)
        assert (study / "results" / "figures" / "recognition_vs_compute.png").stat().st_size > 10_000
    elif task == "virl_vl":  # route success on visual OOD beside the paper's V-IRL-VL numbers
        assert "| (v1) |" in summary and "| paper (11B) | 16.7 | 11.1 | 77.8 | -5.6 | +61.1 |" in summary
        assert all(r["per_step_accuracy"] != "" for r in rows)
    elif task == "virl_l":  # navigation is scored by per-step accuracy, beside the paper's V-IRL-L numbers
        assert "Score: per-step accuracy (%)." in summary
        assert "| paper (11B) | OOD | 80.8 | 1.3 | 91.8 | -79.5 | +11.0 |" in summary
        assert all(r["per_step_accuracy"] != "" for r in rows)
    else:  # GP-L's test study also has SFT on varied rules and the harder OOD splits
        assert "| paper (11B) | OOD | 11.5 | 3.4 | 15.0 | -8.1 | +3.5 |" in summary
        assert "(ix)" in summary and "(x)" in summary and "### Harder OOD splits" in summary
        assert "OOD: J, Q and K count 12" in summary and "OOD: stated card values" in summary
    # compute grows along each run
    sft = {int(r["step"]): float(r["gflops"]) for r in rows if r["run"] == "sft" and r["split"] == "eval_id"}
    init = next(float(r["gflops"]) for r in rows if r["run"] == "init" and r["split"] == "eval_id")
    assert 0 < init < sft[1] < sft[2]


def test_data_is_tracked_by_dvc(study):
    dvc_file = yaml.safe_load((study / "data.dvc").read_text())
    assert dvc_file["outs"][0]["md5"].endswith(".dir")
    assert (study / ".dvc" / "cache").is_dir()


def test_every_job_is_a_child_run_of_one_study(study):
    mlflow.set_tracking_uri(f"sqlite:///{study / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sftvsrl"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("sftvsrl.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = sorted(r.data.tags.get("sftvsrl.stage") for r in children)
    assert stages.count("evaluate") == len(study_checkpoints(study)) * len(study_splits(study))
    varied = {("sft-varied", 1), ("sft-varied", 2)} <= study_checkpoints(study)
    assert (
        stages.count("rl") == len(study_checkpoints(study)) - 4 - 2 * varied
        and stages.count("init") == 1
        and stages.count("sft") == 1
        and stages.count("sft-varied") == varied
        and stages.count("data-extra") == varied
    )
    assert "data" in stages
    assert all(r.info.status == "FINISHED" for r in children)
    # the parent spans the study: open before its first job, closed by the report after its last
    parent = parents[0].info
    assert parent.status == "FINISHED" and parent.start_time <= min(r.info.start_time for r in children)
    assert parent.end_time >= max(r.info.end_time for r in children)


def html_text(page: str) -> str:
    """The text of a Snakemake report page: its rendered rst sits in the page's scripts, escaped."""
    import html

    return html.unescape(page.replace("\\u0027", "'").replace('\\"', '"'))


def test_nothing_left_to_do_and_report_renders(study):
    result = run_snakemake(study, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
    result = run_snakemake(study, "--report", str(study / "report.html"))
    assert result.returncode == 0, result.stderr[-3000:]
    html = (study / "report.html").read_text()
    assert len(html) > 50_000
    # the first page (the workflow's description) and the summary's caption show summary.md's claims tables
    verdicts = list(csv.DictReader((study / "results" / "verdicts.csv").open()))
    assert verdicts and "Claims and verdicts of study" in html
    text = html_text(html)
    for row in verdicts:
        assert row["paper's finding"] in text and row["ours: difference, points [95% CI]"] in text
        assert row["verdict"].strip("*") in text


def test_the_ui_command_serves_the_study_as_a_researcher_reads_it(study):
    """`sftvsrl ui` on the study's store: a real `mlflow server` on a loopback port, read through its REST API."""
    import json
    import signal
    import socket
    import time
    import urllib.request

    from mlflow import MlflowClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    study_config = yaml.safe_load(STUDY_CONFIG[study].read_text())  # an overlay: the store's keys are the default's
    where = {
        "study": study_config["study"],
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "sftvsrl"},
    }
    command = [sys.executable, "-m", "sftvsrl.cli", "ui", "--config", json.dumps(where), "--port", str(port)]
    proc = subprocess.Popen(command, cwd=study, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        link = proc.stdout.readline().split(": ", 1)[1].strip()
        assert "workflowType=machine_learning" in link and "compareRunsMode=CHART" in link
        deadline = time.monotonic() + 300  # starts in seconds; the bound only guards a hang
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(1)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name("sftvsrl")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        names = [r.info.run_name for r in runs]
        assert len(names) == len(set(names)), sorted(names)
        training = [r for r in runs if r.data.tags.get("sftvsrl.stage") in ("init", "sft", "rl")]
        # the printed link's filter, as the UI sends it to the server, selects exactly the arms (SFT, RL)
        arms = [r for r in runs if r.data.tags.get("sftvsrl.stage") in ("sft", "sft-varied", "rl")]
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(link).fragment.split("?", 1)[1])
        # sorted by name, not by start time: the UI lists the arms flat instead of folded under the study's run
        order = f"{query['orderByKey'][0]} {'ASC' if query['orderByAsc'][0] == 'true' else 'DESC'}"
        assert order == "tags.`mlflow.runName` ASC"
        shown = client.search_runs(
            [exp.experiment_id], filter_string=query["searchFilter"][0], order_by=[order], max_results=1000
        )
        assert sorted(r.info.run_id for r in shown) == sorted(r.info.run_id for r in arms)
        assert [r.info.run_name for r in shown] == sorted(r.info.run_name for r in arms)
        # the first chart section, "curves", holds each arm's score on every split against step and compute
        for r in shown:
            score = get_task(r.data.tags["sftvsrl.task"]).primary_metric
            expected = {f"{CURVES_SECTION}/{s}_{score}_by_{x}" for s in ("id", "ood_rule") for x in ("step", "mflops")}
            assert expected <= {k for k in r.data.metrics if k.startswith(f"{CURVES_SECTION}/")}, r.info.run_name
            # the first section: sections sort by name, ahead of the trainer's own (clip_ratio/..., completions/...)
            assert min(k.rsplit("/", 1)[0] for k in r.data.metrics if "/" in k) == CURVES_SECTION, r.info.run_name
        assert training and all(r.info.run_name.endswith(f"-{r.data.tags['sftvsrl.task']}-s0") for r in training)
        assert max(len(r.data.params) for r in runs) <= 100
        assert all(not k.startswith("profiling") for r in runs for k in r.data.metrics)
        # the parent run holds the answer: every checkpoint's score, every claim's verdict, the claims table
        parent = next(r for r in runs if r.data.tags.get("sftvsrl.role") == "study")
        claims = list(csv.DictReader((study / "results" / "claims.csv").open()))
        task = claims[0]["task"]
        keys = claim_keys(claims, CLAIM_TAG + ".")
        assert len(set(keys)) == len(claims)  # (v) at equal compute and at equal steps: two keys
        for key, row in zip(keys, claims):
            assert parent.data.tags[key] == row["verdict"]
        description = parent.data.tags["mlflow.note.content"]  # summary.md's claims tables: text, numbers, verdict
        for row in csv.DictReader((study / "results" / "verdicts.csv").open()):
            row["#"] = row["#"].lstrip("\\")  # escaped for rst in the CSV only
            assert "| " + " | ".join(row.values()) + " |" in description
        assert f"score/{task}/init/eval_id" in parent.data.metrics
        scores = client.get_metric_history(parent.info.run_id, f"score/{task}/sft/eval_id")
        assert sorted(m.step for m in scores) == [1, 2]
        # every training arm carries its evaluations as curves from init, against step and against compute
        for run_name, steps in (("sft", [0, 1, 2]), ("rl-v1", [0, 1]), ("rl-v2", [0, 1])):
            stage = "sft" if run_name == "sft" else "rl"
            train = [
                r
                for r in runs
                if r.data.tags.get("sftvsrl.stage") == stage
                and (stage == "sft" or r.data.tags.get("sftvsrl.run") == run_name)
            ]
            assert len(train) == 1, run_name
            history = client.get_metric_history(train[0].info.run_id, "eval/eval_id/success_rate")
            assert sorted(m.step for m in history) == steps
            by_compute = client.get_metric_history(train[0].info.run_id, "eval_by_mflops/eval_id/success_rate")
            assert len(by_compute) == len(steps) and len({m.step for m in by_compute}) == len(steps)
        # evaluation runs: opened when the work started, their episodes a table the UI can browse
        evals = [r for r in runs if r.data.tags.get("sftvsrl.stage") == "evaluate"]
        for r in evals:
            assert (r.info.end_time - r.info.start_time) / 1000 >= r.data.metrics["generation_s"]
        run = evals[0]
        split = run.data.tags["sftvsrl.split"]
        table = client.download_artifacts(run.info.run_id, f"{split}.episodes_table.json", str(study / "dl"))
        data = json.loads(Path(table).read_text())
        assert "success" in data["columns"] and len(data["data"]) == int(run.data.metrics["episodes"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
