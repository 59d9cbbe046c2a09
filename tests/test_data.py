"""Data generation is deterministic and reproduces the md5 committed in data.dvc (real DVC)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import yaml

from sftvsrl.data import write_splits
from sftvsrl.dvc import dvc_md5, track_data
from sftvsrl.study import load_config

ROOT = Path(__file__).resolve().parents[1]


def default_config(tmp_path: Path) -> dict:
    config = load_config(ROOT / "config" / "config.yaml")
    config["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return config


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jsonl"))}


def test_generation_is_deterministic_and_seed_dependent(tmp_path):
    config = default_config(tmp_path)
    write_splits(config, "gp_l", tmp_path / "a")
    write_splits(config, "gp_l", tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    other = copy.deepcopy(config)
    other["data_seed"] = 1
    write_splits(other, "gp_l", tmp_path / "c")
    assert digest(tmp_path / "c")["rl.jsonl"] != digest(tmp_path / "a")["rl.jsonl"]


def test_regenerated_data_matches_the_committed_data_dvc(tmp_path):
    """A fresh generation from the default config, added to a fresh DVC repo, has the md5
    that the repository's data.dvc records."""
    config = default_config(tmp_path)
    project = tmp_path / "project"
    for task in config["tasks"]:
        write_splits(config, task, project / "data" / task)
    record = track_data(config, project / "data", project / "data_version.json")
    committed = dvc_md5(ROOT / "data.dvc")
    assert committed is not None, "data.dvc must be committed"
    assert record["md5"] == committed
    assert (project / ".dvc" / "cache").is_dir()


def test_push_to_a_configured_remote(tmp_path):
    config = default_config(tmp_path)
    config["dvc"]["remote"] = str(tmp_path / "remote")
    project = tmp_path / "project"
    write_splits(config, "gp_l", project / "data" / "gp_l")
    record = track_data(config, project / "data", project / "marker.json")
    assert record["pushed_to"] == str(tmp_path / "remote")
    pushed = [p for p in (tmp_path / "remote").rglob("*") if p.is_file()]
    assert len(pushed) >= 5  # four splits plus the directory manifest
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] == record["md5"]
