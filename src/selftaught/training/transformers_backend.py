"""Fine-tuning a transformers model on STaR's kept rationales.

A small loop of our own rather than ``Trainer``/``SFTTrainer``: STaR fixes the number of
optimizer *steps* (not epochs) per iteration, wants the completion-only mask built from the
two halves it already has (no second tokenisation pass), and this loop is where tokens/s and
FLOP utilisation are measured. Four things make it fast on a CPU:

* **packing**: the sequences of a micro-batch are laid end to end in rows of up to 512
  tokens, with positions restarting at each sequence, so transformers builds a
  block-diagonal causal mask and next to no compute goes to padding;
* **the output layer only where there is a loss**: the 49152 x 576 ``lm_head`` and the
  cross-entropy run on completion positions only, not on the prompt, which is about half
  the tokens;
* **bf16 weights with an fp32 master copy** (where the processor has bf16 matmuls): forward
  and backward run in bf16 without autocast re-casting every weight on every pass, and Adam
  updates fp32 copies, so small updates are not rounded away;
* **the input embedding's gradient row by row** (one process; see ``_LossModel``), not as the
  dense vocabulary x hidden matrix autograd builds and adds to the tied output layer's (this
  one pays in a fresh process; in a warm one it did not show over the noise).
"""

from __future__ import annotations

import random
import resource
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftaught.faults import fault_point
from selftaught.training.base import TrainExample, Trainer, TrainResult, register
from selftaught.training.flops import computed_flops, matmul_peak_tflops, model_flops_per_token


ROW_TOKENS = 512  # packed row length (a longer sequence gets a row of its own)


class SequenceTooLongError(ValueError):
    pass


@register
class TransformersTrainer(Trainer):
    """Our packed loop, run through ``accelerate.Accelerator``.

    Why accelerate around our own loop rather than ``Trainer``/``SFTTrainer``: the loop is
    where STaR's fixed step count, the packed completion-only batches and the output layer on
    loss positions only live (see the module docstring), and ``Trainer`` would take all three
    away; accelerate adds exactly what more processes need (DDP, FSDP2 or DeepSpeed ZeRO
    chosen by a config file, gradient sync, gathering the full state dict from shards) and
    nothing else, and the same code runs in one process with no launcher.
    """

    name = "transformers"

    def train(self, base_model: str, examples: list[TrainExample], steps: int, out_dir: Path) -> TrainResult:
        cfg = self.config
        if not examples:
            raise ValueError("no training examples: nothing was kept this iteration")
        torch.manual_seed(self.seed)
        accelerator = _accelerator(cfg)
        rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
        if cfg.batch_size % (cfg.micro_batch_size * world):
            raise ValueError(f"training.batch_size={cfg.batch_size} is not micro_batch_size x "
                             f"{world} processes x accumulation")
        bf16 = cfg.bf16 if cfg.bf16 is not None else _bf16_supported(device.type)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        sequences = self._tokenize(tokenizer, examples)
        # Packed rows of a few hundred tokens: plain matmul + softmax attention ran ~3x faster
        # than CPU flash attention's backward with a block-diagonal mask; longer rows keep SDPA,
        # which never materialises the (rows x rows) scores.
        longest = max(len(x) for x, _ in sequences)
        attention = "eager" if device.type == "cpu" and longest <= ROW_TOKENS else "sdpa"
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.float32, attn_implementation=attention).to(device)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules="all-linear", task_type="CAUSAL_LM",
            ))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        # One process: bf16 weights with fp32 masters (below). Several: the engine's own mixed
        # precision (accelerate autocast, FSDP2's policy or DeepSpeed's bf16), fp32 weights.
        master = _MasterWeights(model, params) if bf16 and world == 1 else None
        if master is None and device.type == "cpu":
            # The weights as loaded live in the checkpoint's read-only file mapping (safetensors
            # mmap): Adam's first write copied every page out of it, 2.4 s on the 2-core VM. A
            # copy up front takes ~0.25 s and leaves the first step 0.75 s (benchmarks/cpu_speed.py).
            for p in params:
                p.data = p.data.clone()
        # Adam without weight decay, constant lr after linear warm-up (App. H).
        optimizer = _adamw(master.params if master else params, cfg.learning_rate)
        if accelerator.state.deepspeed_plugin is not None:
            # DeepSpeed reads the micro-batch from a prepared DataLoader; ours is the sampler below.
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        # One process: the input embeddings' gradient is added into the weight's in place (see
        # _LossModel). Several: the engine hooks gradient sync on autograd, so autograd keeps it.
        in_place = world == 1 and accelerator.state.deepspeed_plugin is None
        loss_model, optimizer = accelerator.prepare(_LossModel(model, in_place), optimizer)
        warmup = max(cfg.warmup_steps, 1)
        # Not prepared: accelerate would step a prepared scheduler once per process.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            getattr(optimizer, "optimizer", optimizer), lambda s: min(1.0, (s + 1) / warmup))
        order = _Sampler(len(sequences), self.seed)  # same seed: every process sees the same steps
        share = cfg.batch_size // world

        losses, counts = [], torch.zeros(3, dtype=torch.float64)  # tokens, loss tokens, padding
        compute_s = optimizer_s = first_optimizer_s = 0.0
        start = time.perf_counter()
        bar = tqdm(range(steps), desc="fine-tune", unit="step", leave=False,
                   disable=not accelerator.is_main_process)
        for _ in bar:
            t0 = time.perf_counter()
            batch = [sequences[i] for i in order.take(cfg.batch_size)]
            # The step's loss is the mean over all its target tokens, on every process alike.
            targets = sum(sum(1 for t in tgt if t != -100) for _, tgt in batch)
            mine = batch[rank * share : (rank + 1) * share]
            step_loss = torch.zeros((), dtype=torch.float64)
            for m in range(0, share, cfg.micro_batch_size):
                ids, positions, where, labels, pads = _pack(mine[m : m + cfg.micro_batch_size], device)
                with accelerator.accumulate(loss_model):  # gradient sync on the last micro-batch only
                    # Loss on the rationale and answer only: logits exist only where a label does.
                    logits = loss_model(ids, positions, where)
                    loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum") / targets
                    # accelerate divides by the accumulation steps and the engine averages over
                    # processes; undo both, so the gradient is the step's exact token mean.
                    accelerator.backward(loss * world * cfg.accumulation)
                    accelerator.unwrap_model(loss_model).embedding_backward()
                step_loss += loss.detach().double().cpu()
                counts += torch.tensor([ids.numel() - pads, len(labels), pads], dtype=torch.float64)
            t1 = time.perf_counter()
            if master:
                master.step(optimizer)
            else:
                optimizer.step()
            schedule.step()
            if not master:
                optimizer.zero_grad(set_to_none=True)
            loss_model.zero_grad(set_to_none=True)
            if world > 1:  # the step's loss over all processes, for the record
                step_loss = accelerator.reduce(step_loss.to(device), "sum").cpu()
            compute_s += t1 - t0
            optimizer_s += time.perf_counter() - t1
            if not first_optimizer_s:  # the first step also allocates Adam's moments
                first_optimizer_s = optimizer_s
            fault_point("train step")  # tests only: see selftaught/faults.py
            losses.append(step_loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{world * counts[0].item() / (time.perf_counter() - start):.0f}")
        seconds = time.perf_counter() - start
        if world > 1:
            counts = accelerator.reduce(counts.to(device), "sum").cpu()
        tokens, loss_tokens, padding = (int(c) for c in counts.tolist())
        # Peak resident memory of every process of the group (MiB), for the record.
        peak_rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64)
        if world > 1:
            peak_rss = accelerator.gather(peak_rss.to(device)).cpu()

        if master:
            master.write_back()
        self._save(accelerator, loss_model, tokenizer, out_dir)
        return TrainResult(
            checkpoint=str(out_dir), steps=steps, seconds=seconds, tokens=tokens, losses=losses,
            extra={"bf16": bf16, "method": cfg.method, "examples": len(examples), "processes": world,
                   "distributed_type": str(accelerator.distributed_type.value),
                   **_utilisation(model, params, tokens, loss_tokens, seconds, bf16, device.type, world),
                   "loss_tokens": loss_tokens, "padding_tokens": padding,
                   "seconds_forward_backward": round(compute_s, 3),
                   "seconds_optimizer": round(optimizer_s, 3),
                   "seconds_optimizer_first_step": round(first_optimizer_s, 3),
                   "peak_rss_mib": [round(x) for x in peak_rss.tolist()]},
        )

    @staticmethod
    def _save(accelerator, loss_model, tokenizer, out_dir: Path) -> None:
        """A full Hugging Face checkpoint (LoRA: the adapter), written by the main process only.

        ``get_state_dict`` gathers FSDP2 / ZeRO-3 shards into whole tensors (a collective: every
        process takes part); ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save``.
        """
        state = accelerator.get_state_dict(loss_model)
        if accelerator.is_main_process:
            inner = accelerator.unwrap_model(loss_model).model
            state = {k.removeprefix("model."): v for k, v in state.items()}
            out_dir.mkdir(parents=True, exist_ok=True)
            inner.save_pretrained(out_dir, state_dict=state)
            tokenizer.save_pretrained(out_dir)
        accelerator.wait_for_everyone()

    def _tokenize(self, tokenizer, examples: list[TrainExample]) -> list[tuple[list[int], list[int]]]:
        """(input ids, next-token targets) per example; a target is -100 where there is no loss.

        The two halves are tokenised apart, exactly as generation saw them (prompt ids, then
        generated ids), so the mask is a length, not a second pass over the text.
        """
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
            # Position t predicts token t+1: targets are the labels shifted left by one.
            out.append((p + a, ([-100] * len(p) + a)[1:] + [-100]))
        return out


def _pack(batch: list[tuple[list[int], list[int]]], device: str, row_tokens: int = ROW_TOKENS):
    """Sequences laid end to end in rows of at most ``row_tokens`` (or the longest sequence).

    Positions restart at every sequence, which transformers turns into block-diagonal causal
    attention. Rows are capped because attention inside a row is computed densely: one row of
    16 few-shot prompts would spend 16x the attention FLOPs. The short tail padding each row
    gets is a sequence of its own, with no loss. Returns ids and positions [rows, width],
    the (row, position) of every loss target, the targets, and the number of padding tokens.
    """
    rows: list[list[tuple[list[int], list[int]]]] = []
    limit = max(row_tokens, max(len(x) for x, _ in batch))
    for seq in batch:
        if rows and sum(len(x) for x, _ in rows[-1]) + len(seq[0]) <= limit:
            rows[-1].append(seq)
        else:
            rows.append([seq])
    width = max(sum(len(x) for x, _ in r) for r in rows)
    ids, positions, targets = [], [], []
    for r in rows:
        pad = width - sum(len(x) for x, _ in r)
        ids.append([t for x, _ in r for t in x] + [0] * pad)
        positions.append([p for x, _ in r for p in range(len(x))] + list(range(pad)))
        targets.append([t for _, y in r for t in y] + [-100] * pad)
    where = [(i, j) for i, row in enumerate(targets) for j, t in enumerate(row) if t != -100]
    labels = [targets[i][j] for i, j in where]
    pads = len(rows) * width - sum(len(x) for x, _ in batch)
    return (torch.tensor(ids, device=device), torch.tensor(positions, device=device),
            torch.tensor(where, device=device).T, torch.tensor(labels, device=device), pads)


class _LossModel(torch.nn.Module):
    """The model with ``_loss_logits`` as its forward, so that DDP / FSDP2 / DeepSpeed see
    (and hook) one forward call, not the decoder and the output layer called apart.

    With ``embedding_in_place`` the input embedding's gradient skips autograd: the lookup runs
    on the detached weight, and ``embedding_backward`` (called after each backward) adds the
    rows that were looked up into the weight's gradient. Autograd would build a dense
    vocabulary x hidden gradient for the lookup (zero-filled, 113 MB for SmolLM2's 49152 x 576)
    and, the weight being tied to the output layer, add it to that layer's dense gradient: a
    fill and an add over 28M floats a micro-batch for a few hundred rows: 12-15% of a step in
    a fresh process on 2 CPU cores (torch.profiler, the default task), where those buffers are
    page-faulted in; next to nothing once the heap is warm (README, "CPU speed"). Only for a
    plain ``nn.Embedding`` whose weight trains, and in one process (gradient sync is hooked on
    autograd).
    """

    def __init__(self, model, embedding_in_place: bool = False):
        super().__init__()
        self.model = model
        # FSDP2's transformer-based wrapping looks for the decoder layer classes here.
        self._no_split_modules = getattr(model, "_no_split_modules", None)
        embedding = model.get_input_embeddings()
        self.in_place = (embedding_in_place and type(embedding) is torch.nn.Embedding
                         and embedding.weight.requires_grad and embedding.max_norm is None
                         and not embedding.scale_grad_by_freq and not embedding.sparse)
        self._looked_up: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, ids, positions, where):
        if not self.in_place:
            return _loss_logits(self.model, ids, positions, where)
        weight = self.model.get_input_embeddings().weight
        embeds = torch.nn.functional.embedding(ids, weight.detach()).requires_grad_()
        self._looked_up = (ids, embeds)
        return _loss_logits(self.model, ids, positions, where, embeds)

    def embedding_backward(self) -> None:
        """Add the looked-up rows' gradient into the embedding weight's (after ``backward``)."""
        if self._looked_up is None:
            return
        (ids, embeds), self._looked_up = self._looked_up, None
        embedding = self.model.get_input_embeddings()
        weight, grad = embedding.weight, embeds.grad.reshape(-1, embeds.shape[-1])
        ids = ids.reshape(-1)
        if embedding.padding_idx is not None:  # as nn.Embedding: no gradient for the padding row
            keep = ids != embedding.padding_idx
            ids, grad = ids[keep], grad[keep]
        # Summed per row first, in token order, then added to the output layer's gradient: the
        # additions autograd does, in its order, so the result is the same to the last bit.
        rows, inverse = ids.unique(return_inverse=True)
        summed = grad.new_zeros(len(rows), grad.shape[-1]).index_add_(0, inverse, grad)
        if weight.grad is None:  # untied: the output layer did not write it
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, rows, summed.to(weight.grad.dtype))


def _accelerator(cfg):
    """The process group's ``Accelerator`` (one process: a plain one, no launcher needed)."""
    import os

    from accelerate import Accelerator

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    bf16 = cfg.bf16 if cfg.bf16 is not None else _bf16_supported("cuda" if torch.cuda.is_available() else "cpu")
    return Accelerator(
        # Without GPUs the processes talk over gloo (accelerate's MULTI_CPU).
        cpu=not torch.cuda.is_available(),
        mixed_precision=("bf16" if bf16 else "no") if distributed else "no",
        gradient_accumulation_steps=cfg.accumulation,
    )


def _loss_logits(model, ids: torch.Tensor, positions: torch.Tensor, where: torch.Tensor,
                 embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the loss positions only: the output layer never runs on prompt tokens.
    ``embeds``: the input embeddings of ``ids``, already looked up (else the model does it)."""
    config = model.config
    inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        # the CausalLM head does more than a linear layer: let it run, then select
        return model(**inputs, position_ids=positions, use_cache=False).logits[where[0], where[1]]
    hidden = model.get_decoder()(**inputs, position_ids=positions, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden[where[0], where[1]])


class _MasterWeights:
    """bf16 weights for forward and backward, fp32 copies for Adam (mixed precision without autocast)."""

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter]):
        self.model, self.bf16 = model, params
        self.params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for m in self.params:  # gradients land here, converted from bf16, without a new allocation
            m.grad = torch.zeros_like(m)
        # Parameters only: buffers such as RoPE's inverse frequencies stay in fp32.
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for m, p in zip(self.params, self.bf16):
                if p.grad is None:
                    m.grad.zero_()
                else:
                    m.grad.copy_(p.grad)
            optimizer.step()
            for m, p in zip(self.params, self.bf16):
                p.copy_(m)

    def write_back(self) -> None:
        """Save the fp32 master weights, not their bf16 rounding."""
        trained = {id(p) for p in self.bf16}
        for p in self.model.parameters():
            if id(p) not in trained:
                p.data = p.data.float()
        for m, p in zip(self.params, self.bf16):
            p.data = m.data


def _adamw(params, lr: float) -> torch.optim.Optimizer:
    try:  # one fused kernel over all parameters: the step is memory-bound on a CPU
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)


def _utilisation(model, params, tokens: int, loss_tokens: int, seconds: float, bf16: bool, device: str,
                 processes: int = 1) -> dict:
    """Model FLOP utilisation (6N per token) and the FLOPs really run, against a measured peak
    (one device's, times the processes)."""
    n = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params)
    head = model.get_output_embeddings()
    embedding = head.weight.numel() if head is not None else 0
    peak = processes * matmul_peak_tflops(torch.bfloat16 if bf16 else torch.float32, device)
    model_tflops = model_flops_per_token(n, trainable) * tokens / seconds / 1e12 if seconds else 0.0
    run_tflops = computed_flops(n, trainable, embedding, tokens, loss_tokens) / seconds / 1e12 if seconds else 0.0
    return {
        "parameters": n,
        "trainable_parameters": trainable,
        "model_tflops": _sig(model_tflops),  # 6N x tokens/s
        "computed_tflops": _sig(run_tflops),  # the FLOPs actually run (lm_head on loss positions only)
        "peak_tflops": _sig(peak),
        "peak_dtype": "bfloat16" if bf16 else "float32",
        "mfu": _sig(model_tflops / peak) if peak else 0.0,
        "hardware_flop_utilisation": _sig(run_tflops / peak) if peak else 0.0,
    }


def _sig(x: float) -> float:
    """Four significant digits: a tiny model on a GPU has an MFU of 1e-5, not 0."""
    return float(f"{x:.4g}")


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


def _bf16_supported(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported()
