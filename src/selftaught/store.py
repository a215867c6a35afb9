"""The run folder: every artifact of every iteration, written so a run can resume anywhere.

Layout::

    RUN/config.yaml                  the resolved config the run was started with
    RUN/metrics.jsonl                one record per finished iteration (0 = the base model)
    RUN/iteration-NN/<stage>.jsonl   generations, rationalizations, train, eval
    RUN/iteration-NN/checkpoint/     the fine-tuned model M_n (HF format, safetensors)
    RUN/iteration-NN/stages.json     seconds and tokens/s of each finished stage

A stage is finished when its file exists; files are written under a temporary name and renamed,
so a crash never leaves a half stage that looks finished. Generation stages also append to a
``.partial`` file as they go, so an interrupted stage picks up after its last finished batch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml


class RunFolderError(ValueError):
    pass


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    # --- the run ----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: dict[str, Any], overwrite: bool) -> "RunStore":
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise RunFolderError(
                    f"run folder {root} already exists; resume it with `selftaught run --resume "
                    f"{root}`, pick another output_dir, or pass --overwrite to delete it"
                )
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root)
        _atomic_write(root / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        return store

    @classmethod
    def open(cls, root: Path) -> "RunStore":
        root = Path(root)
        if not (root / "config.yaml").is_file():
            raise RunFolderError(f"{root} is not a selftaught run folder (no config.yaml in it)")
        return cls(root)

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
        return self.path(n, stage).exists()

    def read(self, n: int, stage: str) -> list[dict[str, Any]]:
        return list(read_jsonl(self.path(n, stage)))

    def write(self, n: int, stage: str, records: Iterable[dict[str, Any]]) -> None:
        _atomic_write(self.path(n, stage), "".join(json.dumps(r) + "\n" for r in records))

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
        ``compute`` returns records carrying ``"id": key(item)``.
        """
        if self.done(n, stage):
            return self.read(n, stage)
        partial = self.path(n, stage).with_suffix(".jsonl.partial")
        records = list(read_jsonl(partial)) if partial.exists() else []
        finished = {r["id"] for r in records}
        todo = [x for x in items if key(x) not in finished]
        with partial.open("a") as f:
            for i in range(0, len(todo), chunk):
                new = compute(todo[i : i + chunk])
                f.write("".join(json.dumps(r) + "\n" for r in new))
                f.flush()
                os.fsync(f.fileno())
                records += new
        by_id: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_id.setdefault(r["id"], []).append(r)
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
        _atomic_write(self.iteration_dir(n) / "stages.json", json.dumps(all_stats, indent=1))

    def metrics(self) -> list[dict[str, Any]]:
        p = self.root / "metrics.jsonl"
        return list(read_jsonl(p)) if p.exists() else []

    def add_metrics(self, record: dict[str, Any]) -> None:
        kept = [m for m in self.metrics() if m["iteration"] != record["iteration"]]
        _atomic_write(self.root / "metrics.jsonl",
                      "".join(json.dumps(m) + "\n" for m in kept + [record]))


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
