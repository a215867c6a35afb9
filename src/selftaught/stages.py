"""What each line of Algorithm 1 does, one level down: prompting, caching, records, timings.

Every stage first looks in the run store and returns what a previous process finished, so a
resumed run never recomputes a finished stage.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from selftaught.config import RunConfig
from selftaught.filtering import distinct_key, preference_pairs, select
from selftaught.generation import Generator, SamplingParams, get_generator
from selftaught.generation.base import derive_seed
from selftaught.samples import balance_score, majority_vote, pass_at_k
from selftaught.store import RunStore, atomic_write, durable_rename
from selftaught.tasks import Example, Task
from selftaught.tasks.steps import make_step_checker
from selftaught.tracking import open_trackers
from selftaught.training import TrainExample, TrainResult, get_trainer


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
        spec = config.loop.step_checker
        if spec == "auto":
            spec = "equations" if task.states_equations else "none"
        self.steps_hold = make_step_checker(spec)  # None: the final answer alone decides

    # --- Algorithm 1, one method per line ----------------------------------------------------
    def generate_rationales(self, n: int, model: str, train: list[Example]) -> list[dict]:
        self._choose_temperature(n, model, train)  # B-STaR, with loop.auto_temperature only
        return self._complete(n, "generations", model, train, hint=False, params=self._sampling(n))

    def failures(self, train: list[Example], rationales: list[dict]) -> list[Example]:
        solved = {r["id"] for r in rationales if r["correct"] and self._steps_hold(r)}
        return [e for e in train if e.id not in solved]

    def rationalize(self, n: int, model: str, failures: list[Example]) -> list[dict]:
        # §3.2: the hint gives the answer; the saved training example will not contain it.
        return self._complete(n, "rationalizations", model, failures, hint=True, params=self._sampling(n))

    def filter_correct(
        self, n: int, train: list[Example], rationales: list[dict], rationalized: list[dict]
    ) -> list[TrainExample]:
        """Keep up to loop.keep_per_question distinct rationales per question whose final answer
        equals the ground truth (and, with a step checker, whose equations hold)."""
        if not self.store.done(n, "train"):
            loop = self.config.loop
            chosen = select(  # generation wins over rationalization
                [e.id for e in train], rationales + rationalized, loop.keep_per_question,
                distinct_key(loop.distinct), self.steps_hold,
            )
            records = [{
                "id": e.id,
                "source": r["stage"],
                # The prompt is rebuilt *without* the hint, as if found unaided.
                "prompt": self._training_prompt(e),
                "completion": self._completion(r),
            } for e in train for r in chosen.kept.get(e.id, [])]
            self._write_preference_pairs(n, train, chosen)
            atomic_write(self.store.iteration_dir(n) / "filter.json", json.dumps(chosen.stats(), indent=1))
            if not records:
                raise NothingKeptError(
                    f"iteration {n}: no rationale reached the right answer for any of the "
                    f"{len(train)} training questions, so there is nothing to fine-tune on "
                    f"(generations saved in {self.store.iteration_dir(n)}). STaR needs a base model "
                    "that is right more often than chance: make the task easier, set "
                    "loop.rationalize=true, sample more (generation.samples_per_question with "
                    "generation.temperature > 0), or use a larger model"
                    + (f"; {sum(chosen.step_rejected.values())} right answers were reached through "
                       "a false equation and rejected by loop.step_checker (none: keep them)"
                       if chosen.step_rejected else "")
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
        """Train M_n from ``base_model`` (the paper: M, never M_{n-1}) and return its checkpoint."""
        out = self.store.iteration_dir(n) / "checkpoint"
        summary = self.store.iteration_dir(n) / "train.json"
        if summary.exists():
            return str(out)
        self._release_generator()  # free its memory for training
        steps = steps or self.config.training.steps(n)  # §4.1: 40 · 1.2^(n-1)
        partial = out.with_name("checkpoint.partial")
        shutil.rmtree(partial, ignore_errors=True)
        result = self._train(base_model, dataset, steps, partial)
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

    def evaluate(
        self, n: int, model: str, held_out: list[Example], validation: list[Example] | None = None
    ) -> dict[str, Any]:
        """Accuracy of M_n on the validation and held-out splits; writes and prints iteration
        n's metrics record. Validation chooses (early stop, selected iteration); held-out is
        only reported."""
        done = {m["iteration"]: m for m in self.store.metrics()}
        if n in done:
            return done[n]
        checked = self._validate(n, model, validation) if validation is not None else {}
        records = self._complete(n, "eval", model, held_out, hint=False, params=self.greedy)
        consistency = self._self_consistency(n, model, held_out)  # eval.samples > 1 only
        record = self._metrics(n, records)
        if checked:
            from selftaught.loop import selected

            record.update(checked)
            best = selected([m for m in done.values() if m["iteration"] < n] + [record])
            record["selected_iteration"], record["selected_accuracy"] = best["iteration"], best["accuracy"]
        record.update(consistency)
        self.store.add_metrics(record)
        self.trackers.metrics(record)
        self.say(summary_line(record))
        return record

    def prune_checkpoints(self, history: list[dict[str, Any]]) -> None:
        """loop.keep_checkpoints=selected: delete each M_k that is neither the newest model (the
        next iteration samples from it, or trains on from it) nor the one best on validation."""
        if self.config.loop.keep_checkpoints == "all":
            return
        from selftaught.loop import selected

        keep = {history[-1]["iteration"], selected(history)["iteration"]}
        for m in history:
            if m["iteration"] > 0 and m["iteration"] not in keep and self.store.delete_checkpoint(m["iteration"]):
                self.say(f"deleted iteration {m['iteration']}'s checkpoint (loop.keep_checkpoints=selected)")

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
            prompts = [self._prompt(n, stage, e, hint) for e in chunk]
            # One seed per (run seed, iteration, stage, question); the generator derives one per sample.
            seeds = [derive_seed(self.config.seed, n, stage, e.id) for e in chunk]
            outputs = self._generator_for(model).generate(prompts, params, desc=f"iteration {n} {stage}",
                                                          seeds=seeds)
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
                        **({"leaks_hint": self.task.leaks_hint(c.text, e)} if hint else {}),
                    })
            return records

        chunk = 4 * self.config.generation.batch_size  # a crash loses at most this much
        records = self.store.resumable(n, stage, examples, lambda e: e.id, compute, chunk)
        seconds = time.perf_counter() - start
        self.store.record_stage(n, stage, seconds=seconds, tokens=tokens,
                                tokens_per_second=tokens / seconds if seconds else 0.0)
        return records

    def _choose_temperature(self, n: int, model: str, train: list[Example]) -> None:
        """B-STaR: the temperature of the grid whose samples on a probe subset of the training
        questions have the best mean balance score; saved in temperature.json."""
        grid, path = self.config.loop.auto_temperature, self.store.iteration_dir(n) / "temperature.json"
        if not grid or path.exists():
            return
        probe, k = train[: self.config.loop.probe_size], self.sampling.n
        scores = {}
        for t in grid:
            correct: Counter = Counter()
            for r in self._complete(n, f"probe-t{t:g}", model, probe, hint=False,
                                    params=dataclasses.replace(self.sampling, temperature=t)):
                correct[r["id"]] += r["correct"]
            scores[f"{t:g}"] = sum(balance_score(correct[e.id], k, self.config.loop.balance_m)
                                   for e in probe) / len(probe)
        best = max(grid, key=lambda t: scores[f"{t:g}"])  # a tie goes to the first in the grid
        atomic_write(path, json.dumps({"temperature": best, "balance_score": scores}, indent=1))  # a marker
        self.say(f"iteration {n}: sampling at temperature {best:g} (balance score "
                 + ", ".join(f"{t}: {v:.3f}" for t, v in scores.items()) + ")")

    def _sampling(self, n: int) -> SamplingParams:
        path = self.store.iteration_dir(n) / "temperature.json"
        if self.config.loop.auto_temperature and path.exists():
            return dataclasses.replace(self.sampling, temperature=json.loads(path.read_text())["temperature"])
        return self.sampling

    def _steps_hold(self, record: dict) -> bool:
        return self.steps_hold is None or self.steps_hold(record["output"])

    def _completion(self, record: dict) -> str:
        return record["output"] + (record["stop"] or self.sampling.stop[0])

    def _write_preference_pairs(self, n: int, train: list[Example], chosen) -> None:
        """V-STaR / DPO: correct-versus-incorrect completions of each question, in TRL's
        preference format (prompt, chosen, rejected); the prompt is the hint-free question."""
        pairs = []
        for e in train:
            good = [self._completion(r) for r in chosen.kept.get(e.id, [])]
            bad = [self._completion(r) for r in chosen.rejected.get(e.id, [])]
            prompt = self._training_prompt(e)
            pairs += [{"prompt": prompt, "chosen": c, "rejected": r} for c, r in preference_pairs(good, bad)]
        self.store.write(n, "preference_pairs", pairs)

    def _prompt(self, n: int, stage: str, example: Example, hint: bool) -> str:
        """The few-shot prompt, except for a fine-tuned model with loop.fewshot_for_finetuned off."""
        finetuned = n >= (1 if stage in ("eval", "validation") else 2)  # iteration n generates with M_{n-1}
        if finetuned and not self.config.loop.fewshot_for_finetuned:
            return self.task.format_question(example, hint)
        return self.task.prompt(example, hint, direct=self.direct)

    def _training_prompt(self, example: Example) -> str:
        if self.config.training.keep_fewshot_prompt:
            return self.task.prompt(example, hint=False, direct=self.direct)
        return self.task.format_question(example, hint=False)

    def _generator_for(self, model: str) -> Generator:
        if self._generator is None or self._generator.model_path != model:
            self._release_generator()
            self._generator = self._new_generator(model)
        return self._generator

    def _release_generator(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None

    def close(self) -> None:
        self._release_generator()
        self.trackers.close()

    # --- a stage on several processes (launch.py) ---------------------------------------------
    def _train(self, base_model: str, dataset: list[TrainExample], steps: int, out: Path) -> TrainResult:
        from selftaught.launch import fine_tune_on_group, needs_launcher

        if not needs_launcher(self.config.training):  # one process: here, no launcher
            return self.trainer.train(base_model, dataset, steps, out)
        return fine_tune_on_group(self.config.training, self.config.seed, base_model, dataset, steps,
                                  out, self.store.root)

    def _new_generator(self, model: str) -> Generator:
        from selftaught.launch import ProcessGroupGenerator, generation_processes

        if generation_processes(self.config.generation) == 1:
            return get_generator(model, self.config.model, self.config.generation)
        return ProcessGroupGenerator(model, self.config.model, self.config.generation,
                                     self.config.training, self.store.root / "processes", self.store.root)

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
            rationalized = self.store.read(n, "rationalizations") if self.store.done(n, "rationalizations") else []
            record.update(self._sampling_metrics(n))
            record.update({
                "kept_generation": sources["generations"],
                "kept_rationalization": sources["rationalizations"],
                # right answers whose rationale repeated the hint: not kept
                "rejected_hint_leaks": sum(bool(r["correct"] and r.get("leaks_hint")) for r in rationalized),
                "train_fraction": len(kept) / train_questions,
                "steps": summary["steps"],
                "final_loss": summary["losses"][-1] if summary["losses"] else None,
                "checkpoint": str(self.store.iteration_dir(n) / "checkpoint"),
            })
        record["seconds"] = {k: round(v["seconds"], 2) for k, v in stats.items()}
        record["tokens_per_second"] = {k: round(v["tokens_per_second"], 1) for k, v in stats.items()}
        record["iteration_seconds"] = round(sum(v["seconds"] for v in stats.values()), 2)
        return record

    def _validate(self, n: int, model: str, validation: list[Example]) -> dict[str, Any]:
        records = self._complete(n, "validation", model, validation, hint=False, params=self.greedy)
        correct = sum(r["correct"] for r in records)
        return {"validation_accuracy": correct / len(records), "validation_correct": correct,
                "validation_size": len(records)}

    def _self_consistency(self, n: int, model: str, held_out: list[Example]) -> dict[str, Any]:
        """eval.samples = k > 1: maj@k (Wang et al. 2023) and pass@k (Chen et al. 2021)."""
        k = self.config.eval.samples
        if k <= 1:
            return {}
        params = SamplingParams(max_new_tokens=self.greedy.max_new_tokens, temperature=self.config.eval.temperature,
                                top_p=self.sampling.top_p, n=k, stop=self.greedy.stop, seed=self.config.seed)
        samples: dict[str, list[dict]] = defaultdict(list)
        for r in self._complete(n, "eval_samples", model, held_out, hint=False, params=params):
            samples[r["id"]].append(r)
        majority_right, passed, right = 0, 0.0, 0
        for records in samples.values():
            voted = majority_vote([r["predicted"] for r in records])
            majority_right += any(r["correct"] for r in records if voted is not None and r["predicted"] == voted)
            c = sum(r["correct"] for r in records)
            passed += pass_at_k(len(records), c, k)
            right += c
        questions = len(samples)
        return {"eval_samples": k, "maj_at_k": majority_right / questions, "pass_at_k": passed / questions,
                "sampled_accuracy": right / (k * questions)}

    def _sampling_metrics(self, n: int) -> dict[str, Any]:
        """Samples drawn, correct, rejected for a false step, and distinct kept (filter.json)."""
        path = self.store.iteration_dir(n) / "filter.json"
        if not path.exists():  # the direct baseline samples nothing
            return {}
        f = json.loads(path.read_text())
        rates = list(f["pass_rate"].values())
        chosen = self.store.iteration_dir(n) / "temperature.json"  # B-STaR's choice, if made
        return {
            **(json.loads(chosen.read_text()) if chosen.exists() else {}),
            "samples_drawn": f["samples_drawn"], "samples_correct": f["samples_correct"],
            "step_rejected": f["step_rejected"], "kept_distinct": f["kept"],
            "duplicates": f["duplicates"], "over_cap": f["over_cap"],
            "mean_pass_rate": sum(rates) / len(rates) if rates else None,
            "preference_pairs": len(self.store.read(n, "preference_pairs")),
        }

    @staticmethod
    def say(text: str) -> None:
        tqdm.write(text)


def summary_line(m: dict[str, Any]) -> str:
    line = f"iteration {m['iteration']}: held-out accuracy {m['accuracy']:.1%} ({m['correct']}/{m['held_out']})"
    if "validation_accuracy" in m:
        line += (f", validation {m['validation_accuracy']:.1%} ({m['validation_correct']}/"
                 f"{m['validation_size']}); selected iteration {m['selected_iteration']} "
                 f"(held-out {m['selected_accuracy']:.1%})")
    if m["iteration"] > 0 and "kept_answers" in m:
        line += (f" | fine-tuned on {m['kept_answers']} direct answers | {m['steps']} steps, "
                 f"final loss {m['final_loss']:.3f}")
    elif m["iteration"] > 0:
        line += (f" | kept {m['kept_generation']} generated + {m['kept_rationalization']} "
                 f"rationalized = {m['train_fraction']:.1%} of train | {m['steps']} steps, "
                 f"final loss {m['final_loss']:.3f}")
    if "maj_at_k" in m:
        line += f" | maj@{m['eval_samples']} {m['maj_at_k']:.1%}, pass@{m['eval_samples']} {m['pass_at_k']:.1%}"
    return line + f" | {_duration(m['iteration_seconds'])}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _natural(item: tuple[str, Any]) -> list:
    """Sort key that puts "2 digits" before "10 digits"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", item[0])]
