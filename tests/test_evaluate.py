"""The evaluate stage: fixed rows, fixed sampling seed, consistent JSON + episode table, MLflow run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import write_jsonl
from sftvsrl.data import read_jsonl
from sftvsrl.evaluate import (
    binomial_se,
    episodes_file,
    generic_metrics,
    model_compute,
    row_summary,
    split_name,
)


# --------------------------------------------------------------------------- helpers (no model)
def test_episodes_file_sits_beside_the_json():
    assert episodes_file("results/gp_l/seed0/eval/sft/ckpt-10/eval_id.json") == Path(
        "results/gp_l/seed0/eval/sft/ckpt-10/eval_id.episodes.jsonl"
    )


def test_read_jsonl_takes_the_first_rows_in_file_order(tmp_path):
    path = tmp_path / "eval_ood_rule.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}"}) + "\n" for i in range(10)) + "\n")
    assert [r["id"] for r in read_jsonl(path, 3)] == ["r0", "r1", "r2"]
    assert len(read_jsonl(path)) == 10
    assert split_name(read_jsonl(path, 1), path) == "eval_ood_rule"  # no split field: the file name
    assert split_name([{"split": "eval_id"}], path) == "eval_id"


def test_model_compute_zero_without_ledger_and_read_with_one(tmp_path):
    from sftvsrl.compute import ComputeLedger

    zero = model_compute(tmp_path, n_params=1000)
    assert zero["gflops"] == 0.0 and zero["flops"] == 0.0 and zero["n_params"] == 1000
    ledger = ComputeLedger(n_params=1000)
    ledger.add("sft", train_tokens=500_000)
    ledger.save(tmp_path)
    got = model_compute(tmp_path)
    assert got["gflops"] == pytest.approx(6 * 1000 * 500_000 / 1e9)
    assert got["stages"] == {"sft": pytest.approx(3e9)}


@dataclass
class _A:
    reward: float
    correct: bool


@dataclass
class _E:
    attempts: list = field(default_factory=list)
    success: bool = False


def test_generic_metrics_counts_and_standard_error():
    eps = [_E([_A(-3, False), _A(5, True)], True)] + [_E([_A(-1, False)] * 5, False) for _ in range(3)]
    m = generic_metrics(eps)
    assert m["episodes"] == 4 and m["successes"] == 1
    assert m["success_rate"] == 0.25
    assert m["success_se"] == pytest.approx(binomial_se(0.25, 4))
    assert m["attempts"] == 17 and m["mean_attempts"] == pytest.approx(17 / 4)
    assert m["mean_reward_per_attempt"] == pytest.approx((2 - 15) / 17)
    assert m["first_attempt_success_rate"] == 0.0
    assert binomial_se(0.25, 100) == pytest.approx(0.0433, abs=5e-5)


def test_row_summary_drops_prompts_and_keeps_the_hand():
    row = {
        "id": "x",
        "prompt": [{"role": "user", "content": "long"}],
        "hand": {"cards": ["A", "K"]},
        "route": list(range(500)),
    }
    s = row_summary(row)
    assert "prompt" not in s and s["hand"] == {"cards": ["A", "K"]} and s["route_len"] == 500


# --------------------------------------------------------------------------- the tiny model
@pytest.fixture
def gp_eval_file(tmp_path, tiny_config):
    from sftvsrl.tasks import get_task

    rows = get_task("gp_l").generate_splits(tiny_config["gp"], tiny_config["data_seed"])["eval_ood_rule"]
    path = tmp_path / "data" / "gp_l" / "eval_ood_rule.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def model_with_ledger(tmp_path, tiny_model_dir):
    from sftvsrl.compute import ComputeLedger

    model_dir = tmp_path / "sft" / "ckpt-2" / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    ledger = ComputeLedger(n_params=123_456)
    ledger.add("init", train_tokens=10_000)
    ledger.add("sft", train_tokens=5_000)
    ledger.train_viter = 3  # as an RL run at VIter 3 records it
    ledger.save(model_dir)
    return model_dir, ledger


def test_evaluate_tiny_model_writes_consistent_json_and_episode_table(
    tmp_path, tiny_config, gp_eval_file, model_with_ledger
):
    import mlflow

    from sftvsrl.cli import main
    from sftvsrl.tracking import tracking_uri

    model_dir, ledger = model_with_ledger
    tiny_config["eval"].update(episodes=3, viter=2, max_new_tokens=12, batch_size=2)
    out = tmp_path / "results" / "gp_l" / "seed0" / "eval" / "sft" / "ckpt-2" / "eval_ood_rule.json"
    rc = main(
        [
            "evaluate",
            "--config",
            json.dumps(tiny_config),
            "--task",
            "gp_l",
            "--seed",
            "0",
            "--run-name",
            "sft",
            "--step",
            "2",
            "--model",
            str(model_dir),
            "--data",
            str(gp_eval_file),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert (result["task"], result["seed"], result["run"], result["step"], result["split"]) == (
        "gp_l",
        0,
        "sft",
        2,
        "eval_ood_rule",
    )
    assert (
        result["episodes"] == 3
        and result["viter"] == 2
        and result["temperature"] == tiny_config["eval"]["temperature"]
    )
    assert result["row_ids"] == [r["id"] for r in read_jsonl(gp_eval_file, 3)]
    assert result["train_viter"] == 3  # read from the model's compute.json, not from the run's name ("sft")
    assert result["compute"]["gflops"] == pytest.approx(ledger.flops / 1e9)
    m = result["metrics"]
    for key in ("success_rate", "success_se", "mean_attempts", "mean_reward_per_attempt", "format_error_rate"):
        assert key in m, key

    records = [json.loads(line) for line in episodes_file(out).read_text().splitlines()]
    assert len(records) == 3
    assert [r["id"] for r in records] == result["row_ids"]
    for r in records:
        assert 1 <= r["num_attempts"] == len(r["attempts"]) <= 2
        assert "prompt" not in r["row"] and r["row"]["hand"]["cards"]
        for a in r["attempts"]:
            assert {"answer", "reward", "outcome", "feedback", "info", "correct"} <= set(a)
        assert r["success"] == any(a["correct"] for a in r["attempts"])
        assert r["num_attempts"] == 2 or r["success"]  # a failed episode spends every attempt
    n_att = sum(r["num_attempts"] for r in records)
    assert m["success_rate"] == pytest.approx(sum(r["success"] for r in records) / 3)
    assert m["mean_attempts"] == pytest.approx(n_att / 3)
    rewards = [a["reward"] for r in records for a in r["attempts"]]
    assert m["mean_reward_per_attempt"] == pytest.approx(sum(rewards) / len(rewards))
    timing = result["timing"]
    assert timing["generated_tokens"] == sum(r["generated_tokens"] for r in records) > 0
    assert timing["generation_s"] > 0 and timing["tokens_per_s"] > 0

    # the MLflow child run of the study
    client = mlflow.MlflowClient(tracking_uri(tiny_config))
    runs = client.search_runs(
        [client.get_experiment_by_name(tiny_config["mlflow"]["experiment"]).experiment_id],
        filter_string="tags.`sftvsrl.stage` = 'evaluate'",
    )
    assert len(runs) == 1
    run = runs[0]
    tags = run.data.tags
    assert tags["sftvsrl.run"] == "sft" and tags["sftvsrl.step"] == "2" and tags["sftvsrl.split"] == "eval_ood_rule"
    assert run.data.metrics["success_rate"] == pytest.approx(m["success_rate"])
    assert "mlflow.parentRunId" in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval_ood_rule.json", "eval_ood_rule.episodes.jsonl"} <= artifacts


def test_evaluate_is_the_same_for_every_checkpoint_call(tmp_path, tiny_config, tiny_model_dir, gp_eval_file):
    """Fixed rows and a fixed sampling seed: evaluating the same weights twice gives the same answers.
    A base model folder without compute.json counts 0 FLOPs."""
    from sftvsrl.evaluate import run_evaluation

    tiny_config["eval"].update(episodes=2, viter=2, max_new_tokens=10, temperature=1.0)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name / "eval_ood_rule.json"
        run_evaluation(tiny_config, "gp_l", 0, "base", 0, tiny_model_dir, [gp_eval_file], [out])
        outs.append(out)
    first, second = (
        [[a["answer"] for a in json.loads(line)["attempts"]] for line in episodes_file(o).read_text().splitlines()]
        for o in outs
    )
    assert first == second
    assert json.loads(outs[0].read_text())["compute"]["gflops"] == 0.0


def test_report_reads_real_eval_files(tmp_path, tiny_config, tiny_model_dir, gp_eval_file):
    """The report stage on files written by the evaluate stage (real metric names)."""
    from sftvsrl.evaluate import run_evaluation
    from sftvsrl.report import build_report

    tiny_config["eval"].update(episodes=2, viter=1, max_new_tokens=8)
    files = []
    for run in ("base", "init"):
        out = tmp_path / "results" / "gp_l" / "seed0" / "eval" / run / "ckpt-0" / "eval_ood_rule.json"
        run_evaluation(tiny_config, "gp_l", 0, run, 0, tiny_model_dir, [gp_eval_file], [out])
        files.append(str(out))
    paper_file = Path(__file__).resolve().parents[1] / "config" / "paper_results.yaml"
    outputs = build_report(tiny_config, files, tmp_path / "results", paper_file=paper_file, log_to_mlflow=False)
    text = outputs["summary_csv"].read_text().splitlines()
    assert len(text) == 3 and "format_error_rate" in text[0]
    assert "not tested" in outputs["summary_md"].read_text()


def _write_splits(tmp_path, config) -> list[Path]:
    from sftvsrl.tasks import get_task

    rows = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])
    paths = []
    for split in ("eval_id", "eval_ood_rule"):
        path = tmp_path / "data" / "gp_l" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[split]))
        paths.append(path)
    return paths


def test_both_splits_in_one_job_match_one_job_per_split(tmp_path, tiny_config, tiny_model_dir):
    """One model load and one batched rollout for both splits; with greedy decoding each split's
    answers and metrics are those of a job that evaluates it alone."""
    from sftvsrl.evaluate import run_evaluation

    tiny_config["eval"].update(episodes=3, viter=2, max_new_tokens=10, temperature=0.0, batch_size=64)
    data = _write_splits(tmp_path, tiny_config)
    together = [tmp_path / "together" / f"{p.stem}.json" for p in data]
    results = run_evaluation(tiny_config, "gp_l", 0, "base", 0, tiny_model_dir, data, together)
    assert [r["split"] for r in results] == ["eval_id", "eval_ood_rule"]
    for path, out in zip(data, together):
        alone = tmp_path / "alone" / f"{path.stem}.json"
        run_evaluation(tiny_config, "gp_l", 0, "base", 0, tiny_model_dir, [path], [alone])
        answers = [
            [[a["answer"] for a in json.loads(line)["attempts"]] for line in episodes_file(f).read_text().splitlines()]
            for f in (out, alone)
        ]
        assert answers[0] == answers[1]
        assert json.loads(out.read_text())["metrics"] == json.loads(alone.read_text())["metrics"]
        assert json.loads(out.read_text())["timing"]["episodes_all_splits"] == 6


def test_each_split_run_spans_its_own_work(tmp_path, tiny_config, tiny_model_dir):
    """The splits of one job are played together, but each split's MLflow run ends when its own last episode
    ended (before its metrics were logged), and its result records that time from the rollout's start."""
    import mlflow

    from sftvsrl.evaluate import run_evaluation
    from sftvsrl.tracking import tracking_uri

    tiny_config["eval"].update(episodes=3, viter=2, max_new_tokens=10, batch_size=64)
    data = _write_splits(tmp_path, tiny_config)
    results = run_evaluation(
        tiny_config, "gp_l", 0, "base", 0, tiny_model_dir, data, [tmp_path / f"{p.stem}.json" for p in data]
    )
    client = mlflow.MlflowClient(tracking_uri(tiny_config))
    experiment = client.get_experiment_by_name(tiny_config["mlflow"]["experiment"]).experiment_id
    runs = {
        r.data.tags["sftvsrl.split"]: r for r in client.search_runs([experiment], "tags.`sftvsrl.stage` = 'evaluate'")
    }
    assert set(runs) == {"eval_id", "eval_ood_rule"}
    finished = {r["split"]: r["timing"]["split_finished_s"] for r in results}
    for split, run in runs.items():
        logged = client.get_metric_history(run.info.run_id, "success_rate")[0].timestamp
        assert run.info.start_time <= run.info.end_time <= logged
        assert run.data.metrics["split_finished_s"] == pytest.approx(finished[split])
    # one start for both (the job's), each its own end: the difference of their splits' finishing times
    spans = {split: run.info.end_time - run.info.start_time for split, run in runs.items()}
    assert spans["eval_id"] - spans["eval_ood_rule"] == pytest.approx(
        1000 * (finished["eval_id"] - finished["eval_ood_rule"]), abs=2
    )


def test_a_split_smaller_than_eval_episodes_is_an_error(tmp_path, tiny_config, tiny_model_dir, gp_eval_file):
    from sftvsrl.evaluate import run_evaluation

    n = len(read_jsonl(gp_eval_file))
    tiny_config["eval"]["episodes"] = n + 1
    with pytest.raises(ValueError, match="eval.episodes"):
        run_evaluation(tiny_config, "gp_l", 0, "base", 0, tiny_model_dir, [gp_eval_file], [tmp_path / "x.json"])


def test_an_episode_whose_metrics_fail_stops_the_evaluation_naming_it(
    tmp_path, monkeypatch, tiny_config, tiny_model_dir
):
    """An episode's metrics feed the split's score: a task whose metrics raise is a bug, not a dropped row.
    The toy task with broken metrics (tests/toy_task.py) is evaluated: the error names it and the episode's row."""
    from sftvsrl.evaluate import run_evaluation
    from sftvsrl.tasks import register_task

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    task = register_task("toy_broken", "toy_task:BrokenMetricsToyTask")
    rows = task.generate_splits({"max_number": 5, "sizes": {"eval_id": 2}}, 0)["eval_id"]
    data = write_jsonl(rows, tmp_path / "data" / "eval_id.jsonl")
    tiny_config["eval"]["episodes"] = 2
    with pytest.raises(
        RuntimeError, match=r"task 'toy_broken'.*episode 0 \(row 'toy-eval_id-0'\).*KeyError\('steps'\)"
    ):
        run_evaluation(tiny_config, "toy_broken", 0, "base", 0, tiny_model_dir, [data], [tmp_path / "out.json"])
    assert not (tmp_path / "out.json").exists()  # no result with the episode left out
