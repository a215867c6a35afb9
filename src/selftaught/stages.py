"""What each line of Algorithm 1 does, one level down: prompting, caching, records, timings.

Every stage first looks in the run store and returns what a previous process finished, so a
resumed run never recomputes a finished stage.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter, defaultdict
from typing import Any

from tqdm.auto import tqdm

from selftaught.config import RunConfig
from selftaught.generation import Generator, SamplingParams, get_generator
from selftaught.store import RunStore, atomic_write, durable_rename
from selftaught.tasks import Example, Task
from selftaught.tracking import open_trackers
from selftaught.training import TrainExample, get_trainer


class NothingKeptError(RuntimeError):
    pass


class Stages:
    def __init__(self, config: RunConfig, task: Task, store: RunStore):
        self.config, self.task, self.store = config, task, store
        g = config.generation
        self.sampling = SamplingParams(
            max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
            n=g.samples_per_question, stop=tuple(g.stop or task.stop), seed=config.seed,
        )
        # Held-out accuracy is always measured greedily, one answer per question.
        self.greedy = SamplingParams(max_new_tokens=g.max_new_tokens, stop=self.sampling.stop)
        self.trainer = get_trainer(config.training, config.seed)
        # The direct fine-tuning baseline prompts, trains and evaluates without rationales.
        self.direct = config.method == "direct_finetune"
        self.trackers = open_trackers(config.report_to, config.to_dict(), store.root)
        self._generator: Generator | None = None

    # --- Algorithm 1, one method per line ----------------------------------------------------
    def generate_rationales(self, n: int, model: str, train: list[Example]) -> list[dict]:
        return self._complete(n, "generations", model, train, hint=False, params=self.sampling)

    def failures(self, train: list[Example], rationales: list[dict]) -> list[Example]:
        solved = {r["id"] for r in rationales if r["correct"]}
        return [e for e in train if e.id not in solved]

    def rationalize(self, n: int, model: str, failures: list[Example]) -> list[dict]:
        # §3.2: the hint gives the answer; the saved training example will not contain it.
        return self._complete(n, "rationalizations", model, failures, hint=True, params=self.sampling)

    def filter_correct(
        self, n: int, train: list[Example], rationales: list[dict], rationalized: list[dict]
    ) -> list[TrainExample]:
        """Keep one rationale per question whose final answer equals the ground truth."""
        if not self.store.done(n, "train"):
            first: dict[str, dict] = {}
            for r in rationales + rationalized:  # generation wins over rationalization
                if r["correct"]:
                    first.setdefault(r["id"], r)
            records = []
            for e in train:
                if e.id in first:
                    r = first[e.id]
                    records.append({
                        "id": e.id,
                        "source": r["stage"],
                        # The prompt is rebuilt *without* the hint, as if found unaided.
                        "prompt": self._training_prompt(e),
                        "completion": r["output"] + (r["stop"] or self.sampling.stop[0]),
                    })
            if not records:
                raise NothingKeptError(
                    f"iteration {n}: no rationale reached the right answer for any of the "
                    f"{len(train)} training questions, so there is nothing to fine-tune on "
                    f"(generations saved in {self.store.iteration_dir(n)}). STaR needs a base model "
                    "that is right more often than chance: make the task easier, set "
                    "loop.rationalize=true, sample more (generation.samples_per_question with "
                    "generation.temperature > 0), or use a larger model"
                )
            self.store.write(n, "train", records)
        return [TrainExample(r["prompt"], r["completion"]) for r in self.store.read(n, "train")]

    def answers(self, n: int, train: list[Example]) -> list[TrainExample]:
        """Direct fine-tuning baseline: every training question with its answer, no rationale."""
        if not self.store.done(n, "train"):
            self.store.write(n, "train", [{
                "id": e.id, "source": "answers", "prompt": self._training_prompt(e),
                "completion": self.task.format_answer("", e.answer) + self.sampling.stop[0],
            } for e in train])
        return [TrainExample(r["prompt"], r["completion"]) for r in self.store.read(n, "train")]

    def fine_tune(self, n: int, base_model: str, dataset: list[TrainExample], steps: int | None = None) -> str:
        """Train M_n from the base model M (never from M_{n-1}) and return its checkpoint."""
        out = self.store.iteration_dir(n) / "checkpoint"
        summary = self.store.iteration_dir(n) / "train.json"
        if summary.exists():
            return str(out)
        self._release_generator()  # free its memory for training
        steps = steps or self.config.training.steps(n)  # §4.1: 40 · 1.2^(n-1)
        partial = out.with_name("checkpoint.partial")
        shutil.rmtree(partial, ignore_errors=True)
        result = self.trainer.train(base_model, dataset, steps, partial)
        shutil.rmtree(out, ignore_errors=True)
        durable_rename(partial, out)
        atomic_write(summary, json.dumps({
            "base_model": base_model, "steps": result.steps, "examples": len(dataset),
            "seconds": result.seconds, "tokens": result.tokens,
            "tokens_per_second": result.tokens_per_second, "losses": result.losses, **result.extra,
        }, indent=1))
        self.store.record_stage(n, "fine_tune", seconds=result.seconds, tokens=result.tokens,
                                tokens_per_second=result.tokens_per_second)
        self.trackers.losses(n, result.losses)
        return str(out)

    def evaluate(self, n: int, model: str, held_out: list[Example]) -> dict[str, Any]:
        """Accuracy of M_n on held-out data; writes and prints iteration n's metrics record."""
        done = {m["iteration"]: m for m in self.store.metrics()}
        if n in done:
            return done[n]
        records = self._complete(n, "eval", model, held_out, hint=False, params=self.greedy)
        record = self._metrics(n, records)
        self.store.add_metrics(record)
        self.trackers.metrics(record)
        self.say(summary_line(record))
        return record

    # --- one level down ------------------------------------------------------------------
    def _complete(
        self, n: int, stage: str, model: str, examples: list[Example], hint: bool,
        params: SamplingParams,
    ) -> list[dict]:
        if self.store.done(n, stage):
            return self.store.read(n, stage)
        start, tokens = time.perf_counter(), 0

        def compute(chunk: list[Example]) -> list[dict]:
            nonlocal tokens
            prompts = [self.task.prompt(e, hint, direct=self.direct) for e in chunk]
            outputs = self._generator_for(model).generate(prompts, params, desc=f"iteration {n} {stage}")
            records = []
            for e, prompt, samples in zip(chunk, prompts, outputs):
                for k, c in enumerate(samples):
                    predicted = self.task.extract_answer(c.text, e)
                    tokens += c.tokens
                    records.append({
                        "id": e.id, "sample": k, "stage": stage, "group": e.group,
                        "question": e.question, "answer": e.answer, "prompt": prompt,
                        "output": c.text, "stop": c.stop, "finish": c.finish, "tokens": c.tokens,
                        "predicted": predicted, "correct": self.task.is_correct(predicted, e),
                    })
            return records

        chunk = 4 * self.config.generation.batch_size  # a crash loses at most this much
        records = self.store.resumable(n, stage, examples, lambda e: e.id, compute, chunk)
        seconds = time.perf_counter() - start
        self.store.record_stage(n, stage, seconds=seconds, tokens=tokens,
                                tokens_per_second=tokens / seconds if seconds else 0.0)
        return records

    def _training_prompt(self, example: Example) -> str:
        if self.config.training.keep_fewshot_prompt:
            return self.task.prompt(example, hint=False, direct=self.direct)
        return self.task.format_question(example, hint=False)

    def _generator_for(self, model: str) -> Generator:
        if self._generator is None or self._generator.model_path != model:
            self._release_generator()
            self._generator = get_generator(model, self.config.model, self.config.generation)
        return self._generator

    def _release_generator(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None

    def close(self) -> None:
        self._release_generator()
        self.trackers.close()

    def _metrics(self, n: int, eval_records: list[dict]) -> dict[str, Any]:
        by_group: dict[str, list[bool]] = defaultdict(list)
        for r in eval_records:
            by_group[r["group"] or "all"].append(r["correct"])
        correct = sum(r["correct"] for r in eval_records)
        record: dict[str, Any] = {
            "iteration": n,
            "accuracy": correct / len(eval_records),
            "correct": correct,
            "held_out": len(eval_records),
            "accuracy_by_group": {g: sum(v) / len(v) for g, v in sorted(by_group.items(), key=_natural)},
        }
        stats = self.store.stage_stats(n)
        if n > 0:
            kept = self.store.read(n, "train")
            sources = Counter(r["source"] for r in kept)
            # The direct baseline keeps every question it was given: it generates nothing.
            train_questions = (len({r["id"] for r in self.store.read(n, "generations")})
                               if self.store.done(n, "generations") else len(kept))
            summary = json.loads((self.store.iteration_dir(n) / "train.json").read_text())
            if self.direct:
                record["kept_answers"] = sources["answers"]
            record.update({
                "kept_generation": sources["generations"],
                "kept_rationalization": sources["rationalizations"],
                "train_fraction": len(kept) / train_questions,
                "steps": summary["steps"],
                "final_loss": summary["losses"][-1] if summary["losses"] else None,
                "checkpoint": str(self.store.iteration_dir(n) / "checkpoint"),
            })
        record["seconds"] = {k: round(v["seconds"], 2) for k, v in stats.items()}
        record["tokens_per_second"] = {k: round(v["tokens_per_second"], 1) for k, v in stats.items()}
        record["iteration_seconds"] = round(sum(v["seconds"] for v in stats.values()), 2)
        return record

    @staticmethod
    def say(text: str) -> None:
        tqdm.write(text)


def summary_line(m: dict[str, Any]) -> str:
    line = f"iteration {m['iteration']}: held-out accuracy {m['accuracy']:.1%} ({m['correct']}/{m['held_out']})"
    if m["iteration"] > 0 and "kept_answers" in m:
        line += (f" | fine-tuned on {m['kept_answers']} direct answers | {m['steps']} steps, "
                 f"final loss {m['final_loss']:.3f}")
    elif m["iteration"] > 0:
        line += (f" | kept {m['kept_generation']} generated + {m['kept_rationalization']} "
                 f"rationalized = {m['train_fraction']:.1%} of train | {m['steps']} steps, "
                 f"final loss {m['final_loss']:.3f}")
    return line + f" | {_duration(m['iteration_seconds'])}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _natural(item: tuple[str, Any]) -> list:
    """Sort key that puts "2 digits" before "10 digits"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", item[0])]
