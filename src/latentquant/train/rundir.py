"""The run directory: the names of its files, its lock, atomic writes, and reading a run back.

A run directory holds ``config.yaml`` (the resolved settings), ``checkpoint.safetensors``, ``log.jsonl``,
``metrics.json``, the PNG figures and ``report.html``. Every process that writes it (training, resuming,
overwriting, evaluating) first takes its lock, :func:`lock_run`: an exclusive ``flock`` on ``.lock``, a file
holding the owner's pid and host, so that a second process is refused with a message naming the owner.
Every file is written atomically (:func:`atomic_write_bytes`: a temporary file in the same directory,
fsync, ``os.replace``), so a crash or a full disk leaves the previous version in place; temporary files a
killed process left behind are removed when the next one takes the lock (:func:`remove_stale_temp_files`).
A failed write raises :class:`OutputWriteError`, naming the file (the CLI exits 2).

Reading back: :func:`load_run` and :func:`load_model` give a trained model in eval mode, :func:`export_model`
writes its weights alone (with the resolved configuration and digests) for sharing.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from latentquant._atomic import fsync_directory, fsync_replace, pid_alive, remove_entry, temp_path

if TYPE_CHECKING:
    import torch

    from latentquant.train.config import TrainConfig
    from latentquant.zoo import Autoencoder

CONFIG_NAME = "config.yaml"
CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.html"
LOCK_NAME = ".lock"
FIGURES = ("reconstructions", "traversals", "nmi", "losses")
EXPORT_FORMAT = "latentquant-model"
EXPORT_VERSION = 1

# ``.<name>.tmp-<pid>``: files (and the output staging folder) being written; stale once their writer is gone.
_TEMP_PATTERN = re.compile(r"^\..+\.tmp-\d+$")


class OutputWriteError(OSError):
    """A run file could not be written (disk full, permissions, ...); the previous version is left in place."""

    def __init__(self, path: str | Path, cause: BaseException) -> None:
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        code = cause.errno if isinstance(cause, OSError) else None
        super().__init__(code, f"could not write {path}: {reason}; the previous version (if any) is kept")
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same directory, fsync, ``os.replace``.

    Raises:
        OutputWriteError: the write failed (``path`` is unchanged and no temporary file is left).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputWriteError(path, err) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_outputs(run_dir: Path) -> Iterator[Path]:
    """A staging folder for a set of outputs: files written into it replace their namesakes in ``run_dir``
    one by one (fsync, ``os.replace``) once the ``with`` body succeeds; on failure none of them is moved
    and the staging folder is removed.

    Raises:
        OutputWriteError: a file could not be written or moved (naming it).
    """
    staging = run_dir / f".outputs.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        for item in sorted(staging.iterdir()):
            target = run_dir / item.name
            try:
                fsync_replace(item, target)
            except OSError as err:
                raise OutputWriteError(target, err) from err
        fsync_directory(run_dir)
    except OSError as err:
        if isinstance(err, OutputWriteError):
            raise
        target = run_dir / Path(err.filename).name if getattr(err, "filename", None) else staging
        raise OutputWriteError(target, err) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temp_files(run_dir: Path) -> list[str]:
    """Delete the temporary files and staging folders earlier (killed) writers left in ``run_dir``.

    Call it only while holding the run's lock (no other writer can be active then). Returns the names removed.
    """
    removed = []
    for item in run_dir.iterdir():
        if _TEMP_PATTERN.match(item.name):
            remove_entry(item)
            removed.append(item.name)
    return sorted(removed)


# ------------------------------------------------------------------------------------------ the lock
def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_is_dead(holder: Mapping[str, Any]) -> bool:
    """The lock's recorded owner is a process of this host that no longer exists."""
    pid = holder.get("pid")
    return (
        isinstance(pid, int) and holder.get("host") == socket.gethostname() and pid > 0 and not pid_alive(pid)
    )


class RunLock:
    """The held lock of a run directory (see :func:`lock_run`); :meth:`release` gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: a waiting process then re-creates the file
        os.close(self._fd)
        self._fd = None


def acquire_lock(run_dir: Path, purpose: str) -> RunLock:
    """Take the exclusive lock of ``run_dir`` (which must exist) for ``purpose`` (e.g. ``"train"``).

    A lock whose recorded owner is a dead process of this host is taken over (with a message on stderr).

    Raises:
        ValueError: another live process holds the lock (the message names its pid, host and purpose).
    """
    path = run_dir / LOCK_NAME
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(path)
            if _holder_is_dead(holder):
                # Its owner died but a process that inherited the descriptor keeps the flock: break it.
                print(
                    f"latentquant: taking over the lock of {run_dir} from pid {holder['pid']} "
                    "(no longer running)",
                    file=sys.stderr,
                )
                path.unlink(missing_ok=True)
                continue
            owner = (
                f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                f"({holder.get('purpose', '?')} since {holder.get('since', '?')})"
            )
            raise ValueError(
                f"run directory {run_dir} is in use by {owner}; wait for it to finish or stop it "
                f"(if no such process exists, delete {path})"
            ) from None
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the holder released (unlinked) it between our open and flock: start over
            os.close(fd)
            continue
        previous = _read_holder(path)
        if previous.get("pid") not in (None, os.getpid()) and _holder_is_dead(previous):
            print(
                f"latentquant: {run_dir}: pid {previous['pid']} had stopped without releasing its lock; "
                "taking it over",
                file=sys.stderr,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return RunLock(path, fd)
    raise ValueError(f"could not lock run directory {run_dir}: its lock file {path} keeps changing")


@contextlib.contextmanager
def lock_run(run_dir: str | Path, purpose: str, create: bool = False) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` body; stale temporary files are removed once it is held.

    Args:
        run_dir: the run directory.
        purpose: what the holder does (``"train"``, ``"evaluate"``, ...), shown to processes it refuses.
        create: create ``run_dir`` (and its parents) when missing.

    Raises:
        ValueError: ``run_dir`` is a regular file, or another process holds the lock.
        FileNotFoundError: ``run_dir`` does not exist and ``create`` is false.
    """
    run_dir = Path(run_dir)
    check_run_dir_path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    lock = acquire_lock(run_dir, purpose)
    try:
        remove_stale_temp_files(run_dir)
        yield run_dir
    finally:
        lock.release()


def check_run_dir_path(run_dir: Path) -> None:
    """Refuse a run directory path that names something other than a directory (e.g. a regular file)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is a file, not a directory; choose a directory for --out")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"run directory {run_dir}: {parent} is a file, not a directory")
            break


# ------------------------------------------------------------------------------------------ run files
def write_config(run_dir: Path, config: TrainConfig | Mapping[str, Any]) -> None:
    """Write ``config.yaml`` (the resolved settings) atomically."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(data, sort_keys=False))


def read_config_file(run_dir: Path) -> dict[str, Any]:
    """The mapping in ``run_dir/config.yaml``.

    Raises:
        FileNotFoundError: no config.yaml.
        ValueError: config.yaml is not valid YAML or not a mapping.
    """
    from latentquant.train.config import load_yaml_config

    return load_yaml_config(run_dir / CONFIG_NAME)


# What else a run may write: the GANs' own report figures (``report_figures``), the ``logger`` setting's views
# of the log (``latentquant.train.sinks``: CSV files, TensorBoard event files, an offline W&B run).
MODEL_FIGURES = ("samples", "prior_traversals", "gan_curves")
SINK_FILES = ("train.csv", "eval.csv")
SINK_FOLDERS = ("tensorboard", "wandb")


def remove_run_files(run_dir: Path) -> None:
    """Delete what a run writes in ``run_dir`` (and nothing else), for ``overwrite=true``: its files, figures
    and the logger sinks' files and folders, so the new run's outputs never mix with the old run's."""
    names = [CONFIG_NAME, LOG_NAME, METRICS_NAME, CHECKPOINT_NAME, REPORT_NAME, *SINK_FILES]
    names += [f"{figure}.png" for figure in FIGURES + MODEL_FIGURES]
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    for name in SINK_FOLDERS:
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            shutil.rmtree(run_dir / name)


def holds_run(run_dir: Path) -> bool:
    """``run_dir`` holds (part of) a training run: a config.yaml or a checkpoint."""
    return (run_dir / CHECKPOINT_NAME).exists() or (run_dir / CONFIG_NAME).exists()


def read_log(run_dir: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """Records of ``log.jsonl`` (only those with ``step <= up_to_step`` when given); damaged lines are skipped."""
    path = run_dir / LOG_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        step = record.get("step", 0)
        if up_to_step is None or (isinstance(step, int) and step <= up_to_step):
            records.append(record)
    return records


def rewrite_log(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``log.jsonl`` with ``records`` atomically (on resume: drop records past the checkpoint)."""
    atomic_write_text(run_dir / LOG_NAME, "".join(json.dumps(r) + "\n" for r in records))


class LogWriter:
    """Appends JSON records to ``log.jsonl``, one line each, flushed; a failed write is an :class:`OutputWriteError`.

    ``sinks`` (e.g. :class:`latentquant.train.sinks.Sinks`, the ``logger`` setting's CSV / TensorBoard / W&B views)
    get every record after it is in ``log.jsonl`` and are closed with the writer.
    """

    def __init__(self, run_dir: Path, sinks: Any = None) -> None:
        self.sinks = sinks
        self.path = run_dir / LOG_NAME
        try:
            self._handle = open(self.path, "a")
        except OSError as err:
            raise OutputWriteError(self.path, err) from err

    def write(self, record: Mapping[str, Any]) -> None:
        try:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        except OSError as err:
            raise OutputWriteError(self.path, err) from err
        if self.sinks is not None:
            try:
                self.sinks.write(dict(record))
            except OSError as err:
                raise OutputWriteError(err.filename or self.path.parent, err) from err

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        if self.sinks is not None:
            self.sinks.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a configuration mapping's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def config_differences(
    first: Mapping[str, Any], second: Mapping[str, Any], ignore: frozenset[str]
) -> list[str]:
    """``"key: first != second"`` for every setting (nested mappings flattened as ``a.b``) that differs,
    skipping the top-level keys in ``ignore``."""

    def flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in mapping.items():
            if not prefix and key in ignore:
                continue
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(first), flat(second)
    missing = object()
    return [
        f"{key}: {a.get(key, '<unset>')!r} != {b.get(key, '<unset>')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    ]


# ------------------------------------------------------------------------------------------ reading runs back
def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Autoencoder, TrainConfig]:
    """The trained model of a run directory (from its checkpoint, in eval mode, on ``device``) and its config.

    The configuration is the one stored in the checkpoint (verified by its digest; ``config.yaml`` for
    checkpoints of format version 1). The run's dataset is not needed (the checkpoint records the image shape).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.
        ValueError: a damaged or mismatching checkpoint or configuration.
    """
    model, config, _ = _read_run(Path(run_dir), device)
    return model, config


def _read_run(run_dir: Path, device: str | torch.device) -> tuple[Autoencoder, TrainConfig, Any]:
    from latentquant.train.checkpoint import load_checkpoint

    check_run_dir_path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run directory (no {CHECKPOINT_NAME} in it)")
    checkpoint = load_checkpoint(path)
    settings = checkpoint.config
    if settings is None:  # a checkpoint of format version 1 stores no configuration
        settings = read_config_file(run_dir)
    model, config = _build_trained_model(settings, checkpoint.model_state, checkpoint.extra, path, device)
    return model, config, checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """A trained model, in eval mode on ``device``, from a run directory, its checkpoint, or an exported file
    (``latentquant export``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a latentquant checkpoint or export, or one whose digests do not match its contents.
    """
    from latentquant.train.checkpoint import FORMAT, load_checkpoint, read_safetensors

    path = Path(path)
    if path.is_dir():
        return load_run(path, device)[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") == FORMAT:
        checkpoint = load_checkpoint(path)
        if checkpoint.config is None:
            raise ValueError(f"checkpoint {path} stores no configuration; load its run directory instead")
        return _build_trained_model(
            checkpoint.config, checkpoint.model_state, checkpoint.extra, path, device
        )[0]
    if metadata.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{path} is neither a latentquant checkpoint nor a latentquant export (no format metadata)"
        )
    config, extra = _verify_export(path, tensors, metadata)
    return _build_trained_model(config, tensors, extra, path, device)[0]


def export_model(run_dir: str | Path, out_path: str | Path, overwrite: bool = False) -> Path:
    """Write a run's trained weights alone to ``out_path`` (safetensors, atomically): tensor names as in the
    model's ``state_dict`` (no ``model.`` prefix, no optimizer or RNG state); metadata: ``format``
    (``latentquant-model``), the resolved ``config`` (JSON), its ``config_sha256``, ``tensors_sha256``,
    ``step`` and the ``image_shape``. :func:`load_model` reads it back.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.
        ValueError: ``out_path`` exists (without ``overwrite``) or is the run's own checkpoint, or the
            checkpoint is damaged.
    """
    from safetensors.torch import save as safetensors_save

    from latentquant.train.checkpoint import tensors_digest

    run_dir, out_path = Path(run_dir), Path(out_path)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if out_path.exists():
        if checkpoint_path.exists() and out_path.resolve() == checkpoint_path.resolve():
            raise ValueError(f"export path {out_path} is the run's own checkpoint; choose another file")
        if out_path.is_dir():
            raise ValueError(
                f"export path {out_path} is a directory; give a file name such as model.safetensors"
            )
        if not overwrite:
            raise ValueError(f"export path {out_path} already exists; remove it or pass --overwrite")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"export path {out_path}: folder {out_path.parent} does not exist")
    model, config, checkpoint = _read_run(run_dir, "cpu")
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    config_dict = config.to_dict()
    metadata = {
        "format": EXPORT_FORMAT,
        "version": str(EXPORT_VERSION),
        "model": config.model,
        "step": str(checkpoint.step),
        "image_shape": json.dumps(list(model.image_shape)),
        "config": json.dumps(config_dict),
        "config_sha256": config_digest(config_dict),
        "tensors_sha256": tensors_digest(tensors),
    }
    atomic_write_bytes(out_path, safetensors_save(tensors, metadata=metadata))
    return out_path


def _verify_export(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    from latentquant.train.checkpoint import tensors_digest

    if metadata.get("version") != str(EXPORT_VERSION):
        raise ValueError(
            f"{path}: export format version {metadata.get('version')!r}; this latentquant reads {EXPORT_VERSION}"
        )
    for field in ("config", "config_sha256", "tensors_sha256", "image_shape", "model"):
        if field not in metadata:
            raise ValueError(f"{path}: metadata field {field!r} is missing")
    try:
        config = json.loads(metadata["config"])
        image_shape = json.loads(metadata["image_shape"])
    except ValueError as err:
        raise ValueError(
            f"{path}: metadata field 'config' or 'image_shape' is not valid JSON: {err}"
        ) from err
    if not isinstance(config, dict) or config_digest(config) != metadata["config_sha256"]:
        raise ValueError(f"{path}: metadata field 'config' does not match its config_sha256 (damaged file)")
    if config.get("model") != metadata["model"]:
        raise ValueError(f"{path}: metadata field 'model' {metadata['model']!r} differs from the config's")
    if tensors_digest(tensors) != metadata["tensors_sha256"]:
        raise ValueError(f"{path}: the tensor data does not match field 'tensors_sha256' (damaged file)")
    return config, {"image_shape": image_shape}


def _build_trained_model(
    settings: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    extra: Mapping[str, Any],
    source: Path,
    device: str | torch.device,
) -> tuple[Autoencoder, TrainConfig]:
    import torch

    from latentquant.train.checkpoint import restore_model
    from latentquant.train.config import resolve_config
    from latentquant.train.run import build_run_model, load_dataset, select_device

    config = resolve_config(settings)
    image_shape = extra.get("image_shape")
    dataset_size = extra.get("dataset_size")
    if image_shape is None or config.num_latents is None:
        dataset = load_dataset(config)
        config = resolve_config(settings, num_factors=dataset.num_factors)
        image_shape, dataset_size = tuple(dataset.image_shape), len(dataset)
    model = build_run_model(config, tuple(int(s) for s in image_shape), dataset_size)
    restore_model(model, dict(state), source)
    model.to(select_device(device) if isinstance(device, str) else torch.device(device)).eval()
    return model, config
