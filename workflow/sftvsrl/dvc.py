"""DVC: record data/ in data.dvc (a real DVC cache), compare with the committed md5, push to the
configured remote."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def dvc_md5(dvc_file: Path) -> str | None:
    """The md5 that a .dvc file records for its output, or None when absent."""
    if not dvc_file.exists():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def _dvc(*args: str, cwd: Path) -> str:
    result = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, check=False)  # error below
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def track_data(config: dict[str, Any], data_dir: Path, out: Path) -> dict[str, Any]:
    """`dvc add data_dir`; write a marker with the md5 and whether it matches the committed one."""
    root = data_dir.resolve().parent
    dvc_file = root / f"{data_dir.name}.dvc"
    before = dvc_md5(dvc_file)
    if not (root / ".dvc").is_dir():
        _dvc("init", *([] if (root / ".git").exists() else ["--no-scm"]), cwd=root)
        _dvc("config", "core.analytics", "false", cwd=root)
    _dvc("add", data_dir.name, cwd=root)
    after = dvc_md5(dvc_file)
    record = {"md5": after, "previous_md5": before, "matches_previous": before == after}
    if before and before != after:
        log.warning(
            "data md5 %s differs from the one recorded before (%s): the generator or config changed", after, before
        )
    remote = config["dvc"]["remote"]
    if remote:
        _dvc("remote", "add", "--force", "--local", "study", remote, cwd=root)
        _dvc("push", "--remote", "study", dvc_file.name, cwd=root)
        record["pushed_to"] = remote
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record
