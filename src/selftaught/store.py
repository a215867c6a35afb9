"""The run folder: every artifact of every iteration, written so a run can resume anywhere.

Layout::

    RUN/config.yaml                  the resolved config the run was started with
    RUN/metrics.jsonl                one record per finished iteration (0 = the base model)
    RUN/iteration-NN/<stage>.jsonl   generations, rationalizations, train, eval
    RUN/iteration-NN/checkpoint/     the fine-tuned model M_n (HF format, safetensors); with
                                     loop.keep_checkpoints=selected only the newest and the
                                     one best on validation stay
    RUN/iteration-NN/stages.json     seconds and tokens/s of each finished stage

A stage is finished when its file exists. Every such marker (a stage's .jsonl, ``train.json``,
``metrics.jsonl``, ``stages.json``, ``config.yaml``) is written whole to a temporary name, flushed,
fsynced and renamed over its final name, and only after everything it vouches for (the
checkpoint is renamed into place before ``train.json`` is written): a crash or a full disk never
leaves a half marker, so a resumed run never trusts a half stage. Generation stages also append
to a ``.partial`` file as they go, one line per question holding all its samples, so an
interrupted stage picks up after its last finished question; a torn last line is cut off.

One process writes a run folder at a time: ``RUN/run.lock`` holds the writer's pid, host and
start time under an exclusive ``flock``, which the kernel drops when the process dies, so the
lock of a killed run is taken over by the next and a live one is refused by name.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from selftaught.faults import fault_point


class RunFolderError(ValueError):
    pass


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock: RunLock | None = None

    # --- the run ----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: dict[str, Any], overwrite: bool) -> "RunStore":
        """A new run folder holding ``config``, locked by this process until ``close()``."""
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise RunFolderError(
                    f"run folder {root} already exists; resume it with `selftaught run --resume "
                    f"{root}`, pick another output_dir, or pass --overwrite to delete it"
                )
            RunLock(root).acquire().release()  # refuses to delete a folder a live run writes
            shutil.rmtree(root)
        made = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            store = cls(root)
            store.lock()
            atomic_write(root / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        except BaseException:
            if made:  # a failed start leaves nothing behind
                shutil.rmtree(root, ignore_errors=True)
            raise
        return store

    @classmethod
    def open(cls, root: Path, lock: bool = False) -> "RunStore":
        """An existing run folder; ``lock=True`` to write it (resume), else read only."""
        root = Path(root)
        if not (root / "config.yaml").is_file():
            raise RunFolderError(f"{root} is not a selftaught run folder (no config.yaml in it)")
        store = cls(root)
        if lock:
            store.lock()
        return store

    def lock(self) -> None:
        if self._lock is None:
            self._lock = RunLock(self.root).acquire()

    def close(self) -> None:
        """Release the run folder's lock (also done at exit)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "config.yaml").read_text())

    def iteration_dir(self, n: int) -> Path:
        d = self.root / f"iteration-{n:02d}"
        d.mkdir(exist_ok=True)
        return d

    # --- stages -----------------------------------------------------------------------------
    def path(self, n: int, stage: str) -> Path:
        return self.iteration_dir(n) / f"{stage}.jsonl"

    def done(self, n: int, stage: str) -> bool:
        if not self.path(n, stage).exists():
            return False
        # Killed between writing the stage and deleting its partial file: the stage is finished.
        self._partial(n, stage).unlink(missing_ok=True)
        return True

    def _partial(self, n: int, stage: str) -> Path:
        return self.path(n, stage).with_suffix(".jsonl.partial")

    def read(self, n: int, stage: str) -> list[dict[str, Any]]:
        return list(read_jsonl(self.path(n, stage)))

    def write(self, n: int, stage: str, records: Iterable[dict[str, Any]]) -> None:
        atomic_write(self.path(n, stage), "".join(json.dumps(r) + "\n" for r in records))

    def resumable(
        self,
        n: int,
        stage: str,
        items: list[Any],
        key: Callable[[Any], str],
        compute: Callable[[list[Any]], list[dict[str, Any]]],
        chunk: int,
    ) -> list[dict[str, Any]]:
        """Records for ``items``, computed ``chunk`` at a time and appended as they finish.

        On resume the items whose records are already in the ``.partial`` file are skipped.
        ``compute`` returns records carrying ``"id": key(item)``; the partial file holds one line
        per item with all of its records (every sample), so a torn write loses whole items,
        which are computed again, never some of an item's samples.
        """
        if self.done(n, stage):
            return self.read(n, stage)
        partial = self._partial(n, stage)
        by_id = read_partial(partial) if partial.exists() else {}
        todo = [x for x in items if key(x) not in by_id]
        name = f"{self.iteration_dir(n).name}/{stage}"
        try:
            with partial.open("a") as f:
                for i in range(0, len(todo), chunk):
                    new: dict[str, list[dict[str, Any]]] = {}
                    for r in compute(todo[i : i + chunk]):
                        new.setdefault(r["id"], []).append(r)
                    text = "".join(json.dumps({"id": k, "records": v}) + "\n" for k, v in new.items())
                    f.write(text[: len(text) // 2])  # two writes, so a test can tear the line
                    f.flush()
                    fault_point(f"torn {name}")
                    f.write(text[len(text) // 2 :])
                    f.flush()
                    os.fsync(f.fileno())
                    fault_point(f"append {name}")
                    by_id.update(new)
        except OSError as e:
            raise _naming(e, partial) from e
        ordered = [r for x in items for r in by_id.get(key(x), [])]
        self.write(n, stage, ordered)
        partial.unlink()
        return ordered

    # --- timings and metrics ----------------------------------------------------------------
    def stage_stats(self, n: int) -> dict[str, dict[str, float]]:
        p = self.iteration_dir(n) / "stages.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def record_stage(self, n: int, stage: str, **stats: float) -> None:
        all_stats = self.stage_stats(n)
        all_stats[stage] = stats
        atomic_write(self.iteration_dir(n) / "stages.json", json.dumps(all_stats, indent=1))

    def metrics(self) -> list[dict[str, Any]]:
        p = self.root / "metrics.jsonl"
        return list(read_jsonl(p)) if p.exists() else []

    def add_metrics(self, record: dict[str, Any]) -> None:
        kept = [m for m in self.metrics() if m["iteration"] != record["iteration"]]
        atomic_write(self.root / "metrics.jsonl",
                      "".join(json.dumps(m) + "\n" for m in kept + [record]))

    def delete_checkpoint(self, n: int) -> bool:
        """Delete M_n's checkpoint; True if there was one. It is renamed away first, so a crash
        mid-delete never leaves half a checkpoint under its real name; the next call (a resumed
        run) finishes the deletion."""
        d = self.iteration_dir(n)
        doomed = d / "checkpoint.deleted"
        try:
            if doomed.exists():  # a deletion a crash interrupted
                shutil.rmtree(doomed)
            if not (d / "checkpoint").exists():
                return False
            os.rename(d / "checkpoint", doomed)
            _fsync_dir(d)
            fault_point(f"delete {d.name}")
            shutil.rmtree(doomed)
        except OSError as e:
            raise _naming(e, d / "checkpoint") from e
        return True

    # --- resuming -----------------------------------------------------------------------------
    def progress(self) -> str:
        """Which stages a resumed run finds finished, and where it goes on."""
        done = {m["iteration"] for m in self.metrics()}
        parts, last = [], None
        for d in sorted(self.root.glob("iteration-[0-9][0-9]")):
            n = int(d.name.split("-")[1])
            stages = [s for s in ("generations", "rationalizations", "train") if (d / f"{s}.jsonl").exists()]
            stages += ["fine-tune"] * (d / "train.json").exists() + ["eval"] * (n in done)
            if stages:
                parts.append(f"iteration {n}: {', '.join(stages)}")
                last = f"iteration {n} {stages[-1]}"
        partial = sorted(self.root.glob("iteration-*/*.jsonl.partial"))
        where = f"going on after {last}" if last else "starting from the beginning"
        if partial:
            p = partial[0]
            where += f" ({len(read_partial(p))} questions of {p.parent.name} {p.name.split('.')[0]} already saved)"
        return f"finished: {'; '.join(parts) or 'nothing yet'}; {where}"


class RunLock:
    """``RUN/run.lock``: an exclusive ``flock`` naming its holder (pid, host, start time).

    The kernel drops a flock when its process dies however it dies, so a lock left by a killed
    run is stale by construction and the next run takes it over; a file naming a pid that is
    gone on this host (without its flock) is stale too.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / "run.lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderError(
                    f"run folder {self.path.parent} is in use by {_holder(self.path)}; wait for "
                    "that run to finish or stop it, or pick another output_dir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file as we opened it: try again
                break
            os.close(fd)
        stale = _holder(self.path)
        if stale != "an unknown process":
            print(f"taking over the lock of {stale}, which is gone: {self.path}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        atexit.register(self.release)
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held, so no one locks a dead file
            os.close(self._fd)
            self._fd = None


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"process {h['pid']} on {h['host']} (started {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def read_partial(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The items a ``.partial`` file holds whole; a torn last line is cut off the file."""
    data = Path(path).read_bytes()
    by_id: dict[str, list[dict[str, Any]]] = {}
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            break
        by_id.setdefault(item["id"], []).extend(item["records"])
        good += len(line)
    if good < len(data):  # killed mid-write: drop the torn line so new lines start clean
        os.truncate(path, good)
    return by_id


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with Path(path).open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # A torn last line of a .partial file (killed mid-write): drop it, recompute it.
                if path.suffix == ".partial":
                    return
                raise


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: temporary name, fsync, rename, fsync."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write {path.parent.name}/{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path) from e


def durable_rename(src: Path, dst: Path) -> None:
    """Rename the finished folder ``src`` to ``dst`` once its files are on disk."""
    try:
        for f in sorted(Path(src).rglob("*")):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fault_point(f"checkpoint {Path(dst).parent.name}")
        os.rename(src, dst)
        _fsync_dir(Path(dst).parent)
    except OSError as e:
        raise _naming(e, dst) from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` with the path it concerns (a failed ``write`` or ``fsync`` names none)."""
    if e.filename is not None:
        return e
    return type(e)(e.errno or errno.EIO, e.strerror or str(e), str(path))
