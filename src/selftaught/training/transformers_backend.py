"""Fine-tuning a transformers model on STaR's kept rationales.

A small loop of our own rather than ``Trainer``/``SFTTrainer``: STaR fixes the number of
optimizer *steps* (not epochs) per iteration, wants the completion-only mask built from the
two halves it already has (no second tokenisation pass), and this loop is where tokens/s and
FLOP utilisation are measured. Everything it does is a few lines of torch.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftaught.training.base import TrainExample, Trainer, TrainResult, register


class SequenceTooLongError(ValueError):
    pass


@register
class TransformersTrainer(Trainer):
    name = "transformers"

    def train(self, base_model: str, examples: list[TrainExample], steps: int, out_dir: Path) -> TrainResult:
        cfg = self.config
        if not examples:
            raise ValueError("no training examples: nothing was kept this iteration")
        torch.manual_seed(self.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        bf16 = cfg.bf16 if cfg.bf16 is not None else _bf16_supported(device)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).to(device)
        if cfg.method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules="all-linear", task_type="CAUSAL_LM",
            ))
        model.train()
        sequences = self._tokenize(tokenizer, examples)
        params = [p for p in model.parameters() if p.requires_grad]
        # Adam without weight decay, constant lr after linear warm-up (App. H).
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        warmup = max(cfg.warmup_steps, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
        order = _Sampler(len(sequences), self.seed)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        losses, tokens, start = [], 0, time.perf_counter()
        bar = tqdm(range(steps), desc="fine-tune", unit="step", leave=False)
        for _ in bar:
            batch = [sequences[i] for i in order.take(cfg.batch_size)]
            targets = sum(sum(1 for t in labels if t != -100) for _, labels in batch)
            step_loss = 0.0
            for m in range(0, len(batch), cfg.micro_batch_size):
                ids, labels, mask = _collate(batch[m : m + cfg.micro_batch_size], pad, device)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(input_ids=ids, attention_mask=mask).logits
                # Loss on the rationale and answer only: prompt tokens carry label -100.
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                    ignore_index=-100, reduction="sum",
                ) / targets
                loss.backward()
                step_loss += loss.item()
                tokens += int(mask.sum())
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.3f}")
        seconds = time.perf_counter() - start

        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        n_params = sum(p.numel() for p in model.parameters())
        flops = 6 * n_params * tokens  # forward + backward, the usual estimate
        return TrainResult(
            checkpoint=str(out_dir), steps=steps, seconds=seconds, tokens=tokens, losses=losses,
            extra={"bf16": bf16, "method": cfg.method, "examples": len(examples),
                   "achieved_tflops": flops / seconds / 1e12 if seconds else 0.0},
        )

    def _tokenize(self, tokenizer, examples: list[TrainExample]) -> list[tuple[list[int], list[int]]]:
        # The two halves are tokenised apart, exactly as generation saw them (prompt ids, then
        # generated ids), so the mask is a length, not a second pass over the text.
        prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
        answers = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
        out = []
        for i, (p, a) in enumerate(zip(prompts, answers)):
            if len(p) + len(a) > self.config.max_seq_len:
                raise SequenceTooLongError(
                    f"training example {i} has {len(p) + len(a)} tokens, more than "
                    f"training.max_seq_len={self.config.max_seq_len}; raise it or set "
                    "training.keep_fewshot_prompt=false"
                )
            out.append((p + a, [-100] * len(p) + a))
        return out


class _Sampler:
    """Endless shuffled passes over the examples: STaR counts steps, not epochs."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.queue = n, random.Random(seed), []

    def take(self, k: int) -> list[int]:
        while len(self.queue) < k:
            perm = list(range(self.n))
            self.rng.shuffle(perm)
            self.queue += perm
        out, self.queue = self.queue[:k], self.queue[k:]
        return out


def _collate(batch, pad: int, device: str):
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (x, y) in enumerate(batch):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _bf16_supported(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported()

