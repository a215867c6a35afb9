"""``selftaught`` command line: run (or resume) STaR, compare it with its baselines, report, list tasks."""

from __future__ import annotations

import argparse
import errno
import sys
import textwrap
from pathlib import Path

from selftaught.allocator import tune_allocator
from selftaught.config import ConfigError, RunConfig, describe, load_config

# Keys a resumed run may change: they decide how far the loop goes, where it logs or which
# checkpoints stay on disk, not what it computed.
RESUMABLE_KEYS = ("loop.iterations", "loop.patience", "loop.min_improvement", "loop.keep_checkpoints",
                  "report_to")


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # before torch's first tensor; see selftaught/allocator.py
    parser = argparse.ArgumentParser(prog="selftaught", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run STaR (Algorithm 1) and write every artifact to a run folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run STaR. Options come from an optional YAML config, then key=value "
        "overrides (e.g. loop.iterations=5 task.options.digits_max=3).",
        epilog=_options_help(),
    )
    run.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished stage")
    run.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    run.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                     help="one run per seed, in OUTPUT_DIR/seed-SEED/, then mean ± sd of the "
                     "selected and last iterations' held-out accuracy; give it after the key=value overrides")
    compare = sub.add_parser(
        "compare",
        help="run STaR and the paper's baselines on the same splits; write the table",
        description="Run (or reuse) three runs from one config: STaR, STaR without "
        "rationalization, and direct-answer fine-tuning, in OUTPUT_DIR/{star,"
        "star-no-rationalization,direct-finetune}; then write OUTPUT_DIR/comparison.{md,csv,json} "
        "with five rows (few-shot direct, few-shot CoT, direct fine-tuned, STaR without "
        "rationalization, STaR) and the report in OUTPUT_DIR/report. Run folders that already "
        "exist with the same config are reused (resumed if unfinished). --variants adds three "
        "more runs, STaR's descendants, a row each.",
        epilog="output_dir defaults to runs/compare-<config file name>; every key of "
        "`selftaught run --help` applies (method and loop.rationalize are set per run).",
    )
    compare.add_argument("config", nargs="?", help="YAML config file (e.g. configs/default.yaml)")
    compare.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    compare.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                         help="repeat every run once per seed, in OUTPUT_DIR/seed-SEED/; the table "
                         "gives mean ± sd over seeds (default: the config's one seed, no seed folders); give it "
                         "after the key=value overrides")
    compare.add_argument("--variants", action="store_true",
                         help="also run STaR's descendants, a row each: 4 samples at T=0.7 with up to 4 "
                         "distinct rationales kept (OUTPUT_DIR/star-k-samples), fine-tuning M_n from M_{n-1} "
                         "(star-continue), B-STaR's temperature chosen per iteration (b-star)")
    report = sub.add_parser(
        "report", help="plots and a self-contained HTML page for a run or a comparison",
        description="Render RUN_DIR (a run folder, or a comparison's output_dir) as PNG plots "
        "and one self-contained HTML page, by default in RUN_DIR/report.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="run folder or comparison folder")
    report.add_argument("--output", metavar="DIR", help="where to write (default RUN_DIR/report)")
    sub.add_parser("tasks", help="list the tasks and their options")
    show = sub.add_parser(
        "show-prompt",
        help="print the exact text one question is given, with and without the hint",
        description="Print the exact prompt of one question of TASK: as generated (few-shot "
        "exemplars + question), then with the hint, as rationalization (§3.2) gives it.",
    )
    show.add_argument("task", help="task name (see `selftaught tasks`)")
    show.add_argument("options", nargs="*", metavar="key=value",
                      help="task options, e.g. format=scratchpad or data_files.train=train.jsonl")
    show.add_argument("--split", default="train", help="split to take the question from (default: train)")
    show.add_argument("--index", type=int, default=0, help="which question of the split (default: 0)")
    show.add_argument("--seed", type=int, default=0, help="the run's seed, which orders the split (default: 0)")
    args = parser.parse_args(argv)

    from selftaught.generation.transformers_backend import PromptTooLongError
    from selftaught.launch import WorkerFailedError
    from selftaught.stages import NothingKeptError
    from selftaught.store import RunFolderError
    from selftaught.tasks import DataError
    from selftaught.training.transformers_backend import SequenceTooLongError

    try:
        if args.command == "tasks":
            return _tasks()
        if args.command == "show-prompt":
            return _show_prompt(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "report":
            return _report(args)
        return _run(args)
    except (ConfigError, DataError, RunFolderError, NothingKeptError, PromptTooLongError,
            SequenceTooLongError, WorkerFailedError) as e:
        print(f"selftaught: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nselftaught: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in RESOURCE_ERRORS:
            raise
        print(f"selftaught: error: {resource_error(e, getattr(args, 'run_folder', None))}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from selftaught.loop import default_output_dir, run
    from selftaught.store import RunStore

    if args.seeds and args.resume:
        raise ConfigError("--seeds starts new runs; resume each seed's folder with --resume OUTPUT_DIR/seed-N")
    if args.seeds:
        return _run_seeds(args)
    if args.resume:
        if args.config and "=" in args.config:  # `run --resume DIR key=value`
            args.overrides.insert(0, args.config)
        elif args.config:
            raise ConfigError("with --resume the config comes from the run folder; pass only key=value overrides")
        saved = RunStore.open(Path(args.resume)).config()
        for item in args.overrides:
            key = item.partition("=")[0].strip()
            if key not in RESUMABLE_KEYS:
                raise ConfigError(f"{key} cannot change when resuming; only {', '.join(RESUMABLE_KEYS)} can")
        config = load_config(overrides=args.overrides, base=saved)
        _check_launch(config)
        args.run_folder = Path(args.resume)
        store = RunStore.open(Path(args.resume), lock=True)  # one writer per run folder
        print(f"resuming {store.root}: {store.progress()}")
    else:
        config = _new_config(args)
        if config.output_dir is None:
            config.output_dir = str(default_output_dir(config))
        store = RunStore.create(Path(config.output_dir), config.to_dict(), args.overwrite)
        args.run_folder = store.root
    print(f"run folder: {store.root}")
    try:
        history = run(config, store)
    except KeyboardInterrupt:
        print(f"\nselftaught: interrupted; finished stages are saved, continue with "
              f"`selftaught run --resume {store.root}`", file=sys.stderr)
        return 130
    finally:
        store.close()
    first, last = history[0], history[-1]
    chosen = (f"; selected on validation: iteration {last['selected_iteration']} "
              f"({last['selected_accuracy']:.1%})" if "selected_iteration" in last else "")
    print(f"done: held-out accuracy {first['accuracy']:.1%} (few-shot, iteration 0) -> "
          f"{last['accuracy']:.1%} (last iteration, {last['iteration']}){chosen}; "
          f"metrics in {store.root / 'metrics.jsonl'}")
    return 0


def _run_seeds(args: argparse.Namespace) -> int:
    """`run --seeds A B C`: the same run once per seed, then the spread over seeds."""
    from selftaught.compare import with_seed
    from selftaught.loop import default_output_dir, run, selected
    from selftaught.significance import mean_std
    from selftaught.store import RunStore

    config = _new_config(args)
    root = Path(config.output_dir or default_output_dir(config))
    finals = []
    for seed in args.seeds:
        cfg = with_seed(config, seed)
        cfg.output_dir = str(root / f"seed-{seed}")
        store = RunStore.create(Path(cfg.output_dir), cfg.to_dict(), args.overwrite)
        print(f"run folder: {store.root}")
        try:
            history = run(cfg, store)
        finally:
            store.close()  # its lock: one writer per run folder
        finals.append((selected(history)["accuracy"], history[-1]["accuracy"]))
    for name, values in (("selected on validation", [a for a, _ in finals]), ("last iteration", [b for _, b in finals])):
        mean, std = mean_std(values)
        print(f"done: held-out accuracy, {name}: {100 * mean:.1f}%"
              + (f" ± {100 * std:.1f}" if std is not None else "")
              + f" over seeds {' '.join(map(str, args.seeds))} ({', '.join(f'{100 * v:.1f}%' for v in values)})")
    return 0


def _new_config(args: argparse.Namespace) -> RunConfig:
    """CONFIG [key=value ...] (CONFIG optional), checked as far as can be before any work."""
    from selftaught.tasks import get_task
    from selftaught.tracking import check_trackers

    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)
        args.config = None
    from selftaught.loop import check_data

    config = load_config(args.config, args.overrides)
    check_data(config, get_task(config.task.name, config.task.options))  # before any folder exists
    check_trackers(config.report_to)
    _check_launch(config)
    return config


def _check_launch(config: RunConfig) -> None:
    """Launcher, accelerate config file and device count: one clear line, before any model loads."""
    from selftaught.launch import check_run

    check_run(config)


def _compare(args: argparse.Namespace) -> int:
    from selftaught.compare import compare
    from selftaught.report import render

    config = _new_config(args)
    name = Path(args.config).stem if args.config else config.task.name
    root = Path(config.output_dir or Path("runs") / f"compare-{name}")
    print(f"comparison folder: {root}")
    compare(config, root, seeds=args.seeds, variants=args.variants)
    print((root / "comparison.md").read_text(), end="")
    print(f"table: {root / 'comparison.md'} and {root / 'comparison.csv'}; "
          f"report: {render(root)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from selftaught.report import render

    page = render(Path(args.run_dir), Path(args.output) if args.output else None)
    print(f"report: {page} (plots beside it)")
    return 0


def _tasks() -> int:
    from selftaught.tasks import describe_options, task_class, task_names

    for name in task_names():
        cls = task_class(name)
        print(f"{name}: {cls.description}")
        for key, default, text in describe_options(cls):
            print(f"  {key} (default {default})")
            print("\n".join(textwrap.wrap(text, 88, initial_indent="      ", subsequent_indent="      ")))
    return 0


def _show_prompt(args: argparse.Namespace) -> int:
    from selftaught.tasks import get_task

    overrides = [o if o.startswith("task.options.") else f"task.options.{o}" for o in args.options]
    config = load_config(overrides=[f"task.name={args.task}", *overrides])
    task = get_task(config.task.name, config.task.options)
    if args.index < 0:
        raise ConfigError(f"--index must be >= 0, got {args.index}")
    examples = task.load(args.split, args.index + 1, args.seed)
    if args.index >= len(examples):
        raise ConfigError(f"split {args.split!r} has only {len(examples)} questions; --index {args.index} is past its end")
    example = examples[args.index]
    print(f"=== {task.name}, split {args.split}, question {example.id!r}, answer {example.answer!r} ===")
    print("=== prompt (generating a rationale) ===")
    print(task.prompt(example, hint=False))
    print("=== prompt with the hint (rationalization, §3.2) ===")
    print(task.prompt(example, hint=True))
    return 0


# Errors of the machine rather than of selftaught: said in one line, never a traceback.
RESOURCE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT}


def resource_error(e: OSError, run_folder: Path | None) -> str:
    """One line: what failed, on which path, and what to do."""
    path = e.filename or run_folder or "the run folder"
    what = {
        errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only", errno.ENOENT: "no such file or folder",
    }[e.errno]
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space"
    elif e.errno == errno.ENOENT:
        fix = "check that the path exists"
    else:
        fix = "make it writable or set output_dir to a folder you can write"
    tail = (f", then continue with `selftaught run --resume {run_folder}` (finished stages are kept)"
            if run_folder and Path(run_folder, "config.yaml").exists() else "")
    return f"{what}: {path}; {fix}{tail}"


def _options_help() -> str:
    lines = ["config keys (YAML sections, or key=value on the command line):"]
    for key, default, text in describe(RunConfig):
        lines.append(f"  {key} (default {default})")
        lines += textwrap.wrap(text, 88, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
