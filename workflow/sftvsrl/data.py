"""Write a task's dataset splits as JSONL, and read JSONL back (splits, episode tables).

Deterministic in (config, data_seed): byte-identical files for the same config, so DVC's md5
of data/ is reproducible."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .tasks import get_task, task_section
from .tasks.base import extra_splits

log = logging.getLogger(__name__)


def dump_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write rows with a canonical encoding (sorted keys, no NaN); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of a JSONL file, in file order (all rows when `limit` is None); blank lines skipped."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def write_splits(
    config: dict[str, Any], task_name: str, out_dir: Path, only: list[str] | None = None
) -> dict[str, int]:
    """Generate the splits of a task into out_dir/<split>.jsonl (`only`: these, else the task's own
    `splits`) and record the job in MLflow, with the hand space of each split where the task gives it."""
    from .tracking import job_run

    task = get_task(task_name)
    seed = config["data_seed"]
    section = config[task_section(task_name)]
    names = list(only or task.splits)
    unknown = sorted(set(names) - set(task.splits) - set(extra_splits(task, section)))
    if unknown:
        raise ValueError(f"task {task_name} makes no split {', '.join(unknown)} with this config")
    stage = "data" if only is None else "data-extra"  # the extra splits' job has its own MLflow run
    with job_run(config, stage=stage, task=task_name, seed=seed):
        import mlflow

        splits = task.generate_splits(section, seed)
        counts = {}
        for split in names:
            counts[split] = dump_jsonl(splits[split], out_dir / f"{split}.jsonl")
            log.info("wrote %d rows to %s", counts[split], out_dir / f"{split}.jsonl")
        mlflow.log_metrics({f"rows_{k}": v for k, v in counts.items()})
        mlflow.log_dict({k: splits[k][:3] for k in names}, "sample_rows.json")
        if hasattr(task, "hand_space"):
            space = {k: v for k, v in task.hand_space(section, seed).items() if k in names}
            log.info("hand space: %s", space)
            mlflow.log_dict(space, "hand_space.json")
    return counts


def trainer_dataset(rows: list[dict[str, Any]], task, fields: tuple[str, ...]):
    """A datasets.Dataset of the rows' `fields`, plus `images` (PIL images in the order of the image
    parts) when `task` (a Task object, or None) is an image task: the column TRL's trainers read a
    multimodal example's images from."""
    from datasets import Dataset

    from .tasks.base import row_images

    if getattr(task, "row_images", None) is None:
        return Dataset.from_list([{k: row[k] for k in fields} for row in rows])
    # Arrow needs one type per column: every turn's content as a list of parts, as TRL would make it
    examples = [{k: [_with_parts(m) for m in row[k]] for k in fields} for row in rows]
    for example, row in zip(examples, rows):
        example["images"] = row_images(task, row)
    return Dataset.from_list(examples)


def _with_parts(message: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    return {**message, "content": [{"type": "text", "text": content}] if isinstance(content, str) else content}
