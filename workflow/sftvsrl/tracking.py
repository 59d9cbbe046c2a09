"""MLflow conventions of the study: one parent run per study, one child run per job.

- Tracking URI: ``MLFLOW_TRACKING_URI`` overrides ``config["mlflow"]["tracking_uri"]`` (the schema's
  default: ``sqlite:///mlflow.db``). A relative SQLite path resolves against the current directory (the
  project root when Snakemake runs a job), so every job of a study writes to one file.
  MLflow 3.17 refuses the ./mlruns file store: use SQLite locally, an ``mlflow server`` URI on a
  cluster (SQLite over NFS is not safe).
- Artifacts of a SQLite store go to ``<folder of the db>/mlartifacts/<experiment>/<run>/artifacts``.
- The parent run is found by the tags ``sftvsrl.study=<study>`` and ``sftvsrl.role=study`` and
  created once; concurrent creators converge on the oldest one (later duplicates are deleted).
- A job run (`job_run`) is a child of the parent (tag ``mlflow.parentRunId``) tagged with stage,
  task, seed, viter, git commit, config hash and data version (md5 in data.dvc); its config goes
  in as flattened params (``config.sft.learning_rate``; the prefix keeps them apart from the
  trainers' own params such as ``learning_rate``) and as the artifact ``config.json``.
- Concurrency: several processes may log into one SQLite file. MLflow already sets a 20 s busy
  timeout per session; on top of that every write here is retried with backoff when SQLite
  reports a lock, a file lock serialises the one-time schema creation of a fresh database, and
  `MlflowStepCallback` (sftvsrl.mlflow_callback, used by the trainers instead of transformers'
  MLflowCallback) logs synchronously with the same retries instead of in a background thread
  whose failures vanish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAG_STUDY = "sftvsrl.study"
TAG_ROLE = "sftvsrl.role"
TAG_STAGE = "sftvsrl.stage"
TAG_TASK = "sftvsrl.task"
TAG_SEED = "sftvsrl.seed"
TAG_VITER = "sftvsrl.viter"
TAG_GIT = "sftvsrl.git_commit"
TAG_CONFIG_HASH = "sftvsrl.config_hash"
TAG_DATA = "sftvsrl.data_version"
TAG_RUN = "sftvsrl.run"  # the study's name of the training run (rl-v5, sft, ...)
TAG_STEP = "sftvsrl.step"
TAG_SPLIT = "sftvsrl.split"
TAG_MODEL_DIR = "sftvsrl.model_dir"
TAG_DATA_FILE = "sftvsrl.data_file"
TAG_START_DIR = "sftvsrl.start_dir"
TAG_START = "sftvsrl.start"  # what the start folder is in the study: init, base, sft-<step>
PARENT_TAG = "mlflow.parentRunId"

MAX_PARAM_CHARS = 500
CONFIG_PARAM_PREFIX = "config."
_RETRIES = 10

_initialised: set[str] = set()


# --------------------------------------------------------------------------- URI, retries
def tracking_uri(config: dict[str, Any]) -> str:
    """The tracking URI: $MLFLOW_TRACKING_URI, else config mlflow.tracking_uri; SQLite paths absolute."""
    return _absolute_sqlite(os.environ.get("MLFLOW_TRACKING_URI") or config["mlflow"]["tracking_uri"])


def _absolute_sqlite(uri: str) -> str:
    if not uri.startswith("sqlite:///"):
        return uri
    path = uri[len("sqlite:///") :]
    if path.startswith("/") or path == ":memory:":  # sqlite:////abs/path is already absolute
        return uri
    return "sqlite:///" + str((Path.cwd() / path).resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def artifact_root(uri: str) -> str | None:
    """Where experiments of this store keep artifacts: next to a SQLite db; the server decides otherwise."""
    db = sqlite_path(uri)
    return str(db.parent / "mlartifacts") if db else None


def _is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(
        s in text
        for s in (
            "database is locked",
            "database table is locked",
            "temporarily_unavailable",
            "busy",
            "disk i/o error",
            "unable to open database",
        )
    )


def _store_errors() -> tuple[type[Exception], ...]:
    """What a busy store raises: MLflow wraps SQLAlchemy's errors in MlflowException, except where the store
    is being built (SQLAlchemy's or sqlite3's OperationalError); a file or connection error is an OSError."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    return MlflowException, OperationalError, sqlite3.OperationalError, OSError


def retry(fn: Callable[..., Any], *args: Any, tries: int = _RETRIES, **kwargs: Any) -> Any:
    """Call fn, retrying with exponential backoff + jitter while the store reports a lock."""
    for attempt in range(tries):
        try:
            return fn(*args, **kwargs)
        except _store_errors() as exc:  # only lock-like errors are retried
            if attempt == tries - 1 or not _is_transient(exc):
                raise
            delay = min(10.0, 0.2 * 2**attempt) * (0.5 + random.random())
            log.warning(
                "MLflow store busy (%s); retry %d/%d in %.1fs",
                str(exc).splitlines()[0][:200],
                attempt + 1,
                tries - 1,
                delay,
            )
            time.sleep(delay)


def study_client(config: dict[str, Any]):
    """An MlflowClient on the study's store."""
    return _client(tracking_uri(config))


def _client(uri: str):
    """An MlflowClient for `uri`; the first use of a SQLite file creates its schema under a file lock."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is None or uri in _initialised:
        return MlflowClient(tracking_uri=uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    # Opening a SQLite store creates / migrates its schema: one process at a time, or the
    # migrations of two processes collide. The store is cached per URI, so this happens once.
    with _file_lock(db.with_name(db.name + ".lock")):
        moved = relocate_artifacts(db)
        if moved:
            log.warning("the study folder moved: %s", "; ".join(f"{old} -> {new}" for old, new in moved))
        client = retry(MlflowClient, tracking_uri=uri)
        retry(client.search_experiments, max_results=1)
    _initialised.add(uri)
    return client


def relocate_artifacts(db: Path) -> list[tuple[str, str]]:
    """Point a moved or copied study's artifacts at the folder its SQLite store is in now.

    MLflow stores artifact locations as absolute paths. Our experiments keep theirs in
    `<folder of the db>/mlartifacts/<experiment>` (`experiment_id`), so a location that ends so
    but names another folder is a study that moved (its links would break) or was copied (its
    jobs would write into the original). The experiment's location and its runs' artifact URIs
    are rewritten in MLflow's tables (`experiments`, `runs`); nothing else changes. Returns the
    (old, new) locations rewritten."""
    import sqlite3

    if not db.exists():
        return []
    moved = []
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        try:
            rows = con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # an empty store: no tables yet
            return []
        for exp_id, name, old in rows:
            new = str(db.parent.resolve() / "mlartifacts" / name)
            path = old.removeprefix("file://") if old else ""
            if not path.endswith(f"/mlartifacts/{name}") or path == new:
                continue
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
            for prefix in {old, path}:
                con.execute(
                    "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                    (new, len(prefix) + 1, exp_id, len(prefix), prefix),
                )
            moved.append((old, new))
    return moved


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lock, rely on retries
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- experiment, study run
def experiment_id(config: dict[str, Any], client=None) -> str:
    """Id of the study's experiment (config mlflow.experiment), created once with artifacts next to the db."""
    uri = tracking_uri(config)
    client = client or _client(uri)
    name = config["mlflow"]["experiment"]
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            retry(client.restore_experiment, exp.experiment_id)
        return exp.experiment_id
    root = artifact_root(uri)
    location = str(Path(root) / name) if root else None
    from mlflow.exceptions import MlflowException

    try:
        return retry(client.create_experiment, name, artifact_location=location)
    except MlflowException:  # another process created it first (RESOURCE_ALREADY_EXISTS)?
        exp = retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def _study_runs(client, exp_id: str, study: str) -> list:
    flt = f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = 'study'"
    runs = retry(client.search_runs, [exp_id], filter_string=flt, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def ensure_study_run(config: dict[str, Any]) -> str:
    """Run id of the study's parent run, created on the first call (never duplicated). It stays open while the
    study's jobs run; the report closes it (`close_study_run`), so its duration is the study's."""
    uri = tracking_uri(config)
    client = _client(uri)
    exp_id = experiment_id(config, client)
    study = config["study"]
    runs = _study_runs(client, exp_id, study)
    if runs:
        return runs[0].info.run_id
    run = retry(
        client.create_run,
        exp_id,
        run_name=study,
        tags={TAG_STUDY: study, TAG_ROLE: "study", TAG_GIT: git_commit(), TAG_CONFIG_HASH: _config_hash(config)},
    )
    # Two processes may have raced past the search: keep the oldest, delete the others.
    runs = _study_runs(client, exp_id, study)
    keep = runs[0].info.run_id if runs else run.info.run_id
    if keep != run.info.run_id:
        retry(client.delete_run, run.info.run_id)
    return keep


def close_study_run(config: dict[str, Any]) -> str:
    """End the study's parent run now (the report's last act); a later job of the study reopens nothing, and a
    rerun of the report moves the end."""
    client = study_client(config)
    run_id = ensure_study_run(config)
    retry(client.set_terminated, run_id, "FINISHED")
    return run_id


RUN_NAME_TAG = "mlflow.runName"  # MLflow's tag of a run's name, the key the UI sorts runs by name with


def runs_view_url(server: str, exp_id: str, search_filter: str | None = None) -> str:
    """The link that opens an experiment's runs (MLflow 3 otherwise opens on its GenAI views); with `search_filter`,
    those runs only, in the chart view, sorted by name (the URL parameters MLflow's UI reads: searchFilter,
    compareRunsMode, orderByKey, orderByAsc). Sorted by start time, the UI 3.17 would fold the runs under their
    study's run, collapsed, and chart none of them; sorted by anything else it lists them flat and charts them."""
    from urllib.parse import urlencode

    query = {"workflowType": "machine_learning"}
    if search_filter is not None:
        query.update(
            searchFilter=search_filter, compareRunsMode="CHART", orderByKey=f"tags.`{RUN_NAME_TAG}`", orderByAsc="true"
        )
    # the runs tab itself: MLflow 3.17 redirects /experiments/<id> there and drops the query on the way
    return f"{server.rstrip('/')}/#/experiments/{exp_id}/runs?{urlencode(query)}"


CURVE_METRIC = "eval/eval_id/success_rate"  # every training run carries its evaluations as curves (report.publish)


def curves_filter(study: str) -> str:
    """The study's SFT and RL arms: the training runs whose evaluations the report logged as curves (the init's
    warm-up is their first point, not a curve of its own)."""
    return f"tags.`{TAG_STUDY}` = '{study}' and metrics.`{CURVE_METRIC}` >= 0"


def mlflow_executable() -> str | None:
    """The `mlflow` command of this environment (beside our Python: a venv's sftvsrl run by path, without
    activating the venv), else the one on PATH; None without the full mlflow package."""
    import shutil

    return shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")


def missing_server_modules(auth: bool = False) -> list[str]:
    """What `mlflow server` needs that this environment lacks: mlflow-skinny (the run command's) installs an
    `mlflow` command but not the server's web framework, so the server would die after the link is printed."""
    import importlib.util

    needed = ("flask", "flask_wtf") if auth else ("flask",)  # flask_wtf: MLflow's basic-auth app
    return [name for name in needed if importlib.util.find_spec(name) is None]


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_CONFIG = """[mlflow]
# written by `sftvsrl ui --auth`; no secrets here: the admin's password is MLFLOW_AUTH_ADMIN_PASSWORD
default_permission = READ
database_uri = sqlite:///{users}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def ui_command(
    config: dict[str, Any], host: str, port: int, auth: bool = False
) -> tuple[list[str] | None, str, dict[str, str]]:
    """The `mlflow server` command that serves the study's store on host:port, the link to its curves (the chart
    view of its training runs), and the environment the server needs on top of ours.

    A store that already is a server (http[s]://) needs no command: only the link. A host other than
    loopback lets others reach the store, so it needs `auth`: MLflow's basic-auth app, its users in
    `<folder of the db>/basic_auth.db`, the admin (MLFLOW_AUTH_ADMIN_USERNAME, default "admin") created
    on first start with the password in MLFLOW_AUTH_ADMIN_PASSWORD; credentials never come from the config."""
    import secrets
    import socket

    uri = tracking_uri(config)
    client = _client(uri)
    if retry(client.get_experiment_by_name, config["mlflow"]["experiment"]) is None:
        log.warning(
            "%s has no runs of experiment %r yet: a server for the jobs to come", uri, config["mlflow"]["experiment"]
        )
    exp_id = experiment_id(config, client)  # made as the jobs would make it, so the link holds from the start
    if uri.startswith(("http://", "https://")):
        return None, runs_view_url(uri, exp_id, curves_filter(config["study"])), {}
    if host not in LOOPBACK_HOSTS and not auth:
        raise SystemExit(
            f"ui: --host {host} lets anyone who reaches it read and overwrite the study's runs: add --auth "
            "(MLflow's basic-auth app) or keep --host 127.0.0.1"
        )
    mlflow = mlflow_executable()
    if mlflow is None or missing_server_modules(auth):
        missing = ", ".join(missing_server_modules(auth)) or "the mlflow command"
        raise SystemExit(
            f"ui: the MLflow UI needs the full mlflow package ({missing} missing): pip install -e '.[server]'"
        )
    command = [mlflow, "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = artifact_root(uri)
    if root:  # runs made through this server (a cluster's jobs) keep their artifacts beside the db too
        command += ["--artifacts-destination", root]
    env: dict[str, str] = {}
    if auth:
        db = sqlite_path(uri)
        users = db.parent / "basic_auth.db"
        if not users.exists() and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            raise SystemExit("ui --auth: set MLFLOW_AUTH_ADMIN_PASSWORD (the admin's password, made on first start)")
        ini = db.parent / "basic_auth.ini"
        admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
        ini.write_text(AUTH_CONFIG.format(users=users, admin=admin))
        command += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        # CSRF protection of the auth app needs a key; one per server start unless the site sets one
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(
            32
        )
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host  # a link others can open
    return command, runs_view_url(f"http://{shown}:{port}", exp_id, curves_filter(config["study"])), env


# --------------------------------------------------------------------------- job runs
def git_commit(root: str | Path | None = None) -> str:
    """HEAD's commit, or "unknown" outside a git checkout (a failing `git` is an answer, not an error)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def data_version(root: str | Path | None = None) -> str:
    """The md5 DVC recorded for data/ (data.dvc at the project root, i.e. the current directory)."""
    import yaml

    from .dvc import dvc_md5

    try:
        return str(dvc_md5(Path(root or Path.cwd()) / "data.dvc") or "none")
    except (OSError, yaml.YAMLError, AttributeError, LookupError, TypeError):  # a broken data.dvc must not stop a job
        return "none"


def _config_hash(config: dict[str, Any]) -> str:
    from .config import config_hash

    return config_hash(config)


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """{"sft": {"lr": 1}} -> {"sft.lr": "1"}; lists as JSON; values truncated to MAX_PARAM_CHARS."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
        return out
    text = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
    if len(text) > MAX_PARAM_CHARS:
        text = text[: MAX_PARAM_CHARS - 3] + "..."
    out[prefix[:-1]] = text
    return out


def job_tags(
    config: dict[str, Any], stage: str, task: str | None = None, seed: int | None = None, viter: int | None = None
) -> dict[str, str]:
    tags = {
        TAG_STUDY: config["study"],
        TAG_ROLE: "job",
        TAG_STAGE: stage,
        TAG_GIT: git_commit(),
        TAG_CONFIG_HASH: _config_hash(config),
        TAG_DATA: data_version(),
    }
    for key, value in ((TAG_TASK, task), (TAG_SEED, seed), (TAG_VITER, viter)):
        if value is not None:
            tags[key] = str(value)
    return tags


def is_main_process() -> bool:
    """True in a single-process job and in rank 0 of a multi-process one (torch.distributed's RANK),
    before and after the trainer sets up the process group: only this process writes to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


def _job_run_name(stage: str, task: str | None, seed: int | None, viter: int | None) -> str:
    """The default name of a job's run: `<stage>-<task>-s<seed>-v<viter>`, without the parts not given."""
    parts = (stage, task, f"s{seed}" if seed is not None else None, f"v{viter}" if viter is not None else None)
    return "-".join(str(x) for x in parts if x)


def _create_job_run(
    config: dict[str, Any],
    stage: str,
    task: str | None,
    seed: int | None,
    viter: int | None,
    run_name: str | None,
    extra_tags: dict[str, Any] | None,
    start_time_ms: int | None,
) -> tuple[Any, str]:
    """(client, run id) of a new child run of the study's parent run, tagged with the job's identity."""
    client = study_client(config)
    exp_id = experiment_id(config, client)
    parent = ensure_study_run(config)
    tags = job_tags(config, stage, task, seed, viter)
    tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
    tags[PARENT_TAG] = parent
    name = run_name or _job_run_name(stage, task, seed, viter)
    tags[RUN_NAME_TAG] = name
    run = retry(client.create_run, exp_id, run_name=name, tags=tags, start_time=start_time_ms)
    return client, run.info.run_id


def _log_config(config: dict[str, Any]) -> None:
    """The config as the run's params (flattened, in batches of 100, MLflow's limit per call) and as config.json."""
    import mlflow

    params = flatten(config, prefix=CONFIG_PARAM_PREFIX)  # prefixed: trainers log their own flat params
    items = list(params.items())
    for i in range(0, len(items), 100):
        retry(mlflow.log_params, dict(items[i : i + 100]))
    retry(mlflow.log_dict, config, "config.json")


def _end_job_run(client, run_id: str, status: str, old_term, end_time_ms: int | None = None) -> None:
    """End the run with `status` (at `end_time_ms` when given) and put the previous SIGTERM handler back."""
    import mlflow

    if old_term is not None:
        signal.signal(signal.SIGTERM, old_term)
    with contextlib.suppress(Exception):
        mlflow.flush_async_logging()
    if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
        retry(mlflow.end_run, status)
    else:  # somebody ended it under us (e.g. a callback): still record the outcome
        with contextlib.suppress(Exception):
            retry(client.set_terminated, run_id, status)
    if end_time_ms is not None and status == "FINISHED":
        retry(client.set_terminated, run_id, status, end_time=end_time_ms)


@contextlib.contextmanager
def job_run(
    config: dict[str, Any],
    stage: str,
    task: str | None = None,
    seed: int | None = None,
    viter: int | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    start_time_ms: int | None = None,
    end_time_ms: int | None = None,
) -> Iterator[Any]:
    """A child run of the study, active inside the block (log through `log_params`, `log_metrics`,
    `log_json_artifact`). Ends FINISHED, or FAILED when the block raises (KeyboardInterrupt: KILLED).
    `start_time_ms`: when the job's work began, if before the run opens (evaluations log after playing);
    `end_time_ms`: when it ended, if before the run closes (each split of an evaluation ends on its own).

    In a multi-process job only rank 0 opens the run; the other ranks get None and log nothing.
    """
    import mlflow

    if not is_main_process():
        yield None
        return

    client, run_id = _create_job_run(config, stage, task, seed, viter, run_name, extra_tags, start_time_ms)
    active = retry(mlflow.start_run, run_id=run_id, nested=mlflow.active_run() is not None)
    status = "FAILED"  # until the job's body returns
    old_term = _raise_on_sigterm()
    try:
        _log_config(config)
        yield active
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_job_run(client, run_id, status, old_term, end_time_ms)


def _raise_on_sigterm():
    """SIGTERM (Snakemake / SLURM stopping a job) raises KeyboardInterrupt, so the run ends KILLED
    instead of staying RUNNING forever. Returns the previous handler (None outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return None


def _active() -> bool:
    """An MLflow run is active here (never on ranks > 0: logging there would start a stray run)."""
    import mlflow

    return mlflow.active_run() is not None


def log_json_artifact(obj: Any, name: str) -> None:
    """Log a JSON-serialisable object as an artifact of the active run (name like 'samples.json')."""
    import mlflow

    if _active():
        retry(mlflow.log_dict, json.loads(json.dumps(obj, default=str)), name)


def log_params(params: dict[str, Any]) -> None:
    """mlflow.log_params on the active run, with lock retries."""
    import mlflow

    if _active():
        retry(mlflow.log_params, params)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """mlflow.log_metrics on the active run, synchronously, with lock retries; non-numbers are dropped."""
    import mlflow

    if not _active():
        return
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if clean:
        retry(mlflow.log_metrics, clean, step=step)
