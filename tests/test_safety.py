"""One writer per run folder, validate before creating, resource errors, a safe model cache."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from selftaught.cli import main, resource_error
from selftaught.store import RunStore, read_partial

from helpers import read_jsonl, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main(["run", *tiny_overrides(tiny_model, out, "loop.iterations=1")]) == 0
    return out


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding RUN's lock, as a running `selftaught run` does."""
    code = ("import sys, time; from selftaught.store import RunStore; "
            "RunStore.open(sys.argv[1], lock=True); print('locked', flush=True); time.sleep(120)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(one_iteration, tiny_model, capsys):
    holder = _hold_lock(one_iteration)
    try:
        before = {p: p.stat().st_mtime_ns for p in one_iteration.rglob("*") if p.is_file()}
        assert main(["run", "--resume", str(one_iteration)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == err.splitlines()[-1]  # one line
        assert f"in use by process {holder.pid} on " in err and "selftaught: error:" in err
        # --overwrite of a folder in use deletes nothing
        args = tiny_overrides(tiny_model, one_iteration, "loop.iterations=1")
        assert main(["run", *args, "--overwrite"]) == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert {p: p.stat().st_mtime_ns for p in one_iteration.rglob("*") if p.is_file()} == before
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: its lock file stays behind
        holder.wait()
    assert json.loads((one_iteration / "run.lock").read_text())["pid"] == holder.pid
    assert main(["run", "--resume", str(one_iteration)]) == 0
    out = capsys.readouterr().out
    assert f"taking over the lock of process {holder.pid}" in out
    assert "resuming" in out and "finished: iteration 0: eval; iteration 1: generations" in out
    assert not (one_iteration / "run.lock").exists()  # released at the end


def test_a_lock_file_naming_a_gone_process_is_stale(one_iteration, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(gone.stdout), "host": os.uname().nodename, "started": "earlier"}
    (one_iteration / "run.lock").write_text(json.dumps(stale))
    with RunStore.open(one_iteration, lock=True):
        assert json.loads((one_iteration / "run.lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {stale['pid']}" in capsys.readouterr().out


def test_bad_data_is_found_before_the_run_folder_exists(tmp_path, tiny_model, capsys):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(5) for b in range(5)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]) + '{"question": "What is 9 + 9?"}\n')
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    out = tmp_path / "run"
    args = ["run", *tiny_overrides(tiny_model, out, "loop.iterations=1", "task.name=custom", "task.train_size=12",
                                   f"task.options.data_files={{train: {train}, test: {test}}}")]
    args.remove("task.options.digits_max=1")
    assert main(args) == 2
    assert f"{train}, line 21: missing field 'answer'" in capsys.readouterr().err
    assert not out.exists()
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))  # corrected...
    assert main(args) != 2 or "already exists" not in capsys.readouterr().err  # ...not "already exists"
    assert (out / "config.yaml").is_file()


def test_a_full_disk_keeps_what_was_finished_and_says_what_to_do(tmp_path, tiny_model, monkeypatch, capsys):
    out = tmp_path / "run"
    real_fsync = os.fsync

    def disk_full_in_iteration_2(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "iteration-02" in path and path.endswith(".tmp"):  # the first marker of iteration 2
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_in_iteration_2)
    assert main(["run", *tiny_overrides(tiny_model, out)]) == 2
    captured = capsys.readouterr().err
    assert "Traceback" not in captured
    err = captured.strip().splitlines()[-1]
    assert err == (f"selftaught: error: the disk is full: {out / 'iteration-02' / 'generations.jsonl'}; "
                   f"free some space, then continue with `selftaught run --resume {out}` "
                   "(finished stages are kept)")
    assert [m["iteration"] for m in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    assert not list(out.rglob("*.tmp")) and not (out / "run.lock").exists()
    assert len(read_partial(out / "iteration-02" / "generations.jsonl.partial")) == 24  # kept
    finished = {p: p.stat().st_mtime_ns for p in (out / "iteration-01").rglob("*") if p.is_file()}
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["run", "--resume", str(out)]) == 0
    assert "iteration 2: generations" not in capsys.readouterr().out.split("going on")[0]
    assert {p: p.stat().st_mtime_ns for p in (out / "iteration-01").rglob("*") if p.is_file()} == finished
    assert [m["iteration"] for m in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]


@pytest.mark.parametrize("code, said", [
    (errno.EACCES, "permission denied: /data/run; make it writable or set output_dir to a folder you can write"),
    (errno.EROFS, "the file system is read-only: /data/run; make it writable or set output_dir"),
    (errno.ENOSPC, "the disk is full: /data/run; free some space"),
])
def test_resource_errors_are_one_line(code, said):
    assert resource_error(OSError(code, os.strerror(code), "/data/run"), None).startswith(said)


def test_read_only_output_folder_is_one_line(tmp_path, tiny_model, monkeypatch, capsys):
    from pathlib import Path as P

    real_mkdir = P.mkdir

    def read_only(self, *a, **kw):
        if self == tmp_path / "ro" / "run":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(P, "mkdir", read_only)  # root ignores permissions: simulate a read-only mount
    assert main(["run", *tiny_overrides(tiny_model, tmp_path / "ro" / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"selftaught: error: the file system is read-only: {tmp_path / 'ro' / 'run'}; make it "
        "writable or set output_dir to a folder you can write")


def test_two_runs_converting_one_gguf_at_once_share_one_result(tmp_path, monkeypatch):
    """Both convert (the barrier makes them overlap); one renames, the other reuses it."""
    import transformers

    from selftaught.models import convert_gguf

    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    both_saved = threading.Barrier(2)

    class Fake:
        hf_quantizer = None

        def __init__(self):
            self.config = types.SimpleNamespace(quantization_config=1)

        def save_pretrained(self, path):
            (Path(path) / "config.json").write_text(json.dumps({"by": threading.get_ident()}))
            both_saved.wait(timeout=30)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: type("T", (), {"save_pretrained": lambda self, p: None})())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Fake())
    results, errors = [], []

    def convert():
        try:
            results.append(convert_gguf(gguf, tmp_path / "cache"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert json.loads((results[0] / "config.json").read_text())["by"] in {t.ident for t in threads}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [results[0].name]  # no leftovers
