"""The transformers trainer: packing is exact, the loss is on completions only, bf16 keeps fp32 masters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftaught.config import TrainingConfig
from selftaught.training import TrainExample, get_trainer
from selftaught.training.flops import computed_flops, matmul_peak_tflops, model_flops_per_token
from selftaught.training.transformers_backend import SequenceTooLongError, _loss_logits, _LossModel, _pack

EXAMPLES = [
    TrainExample("Q: What is 3 + 4?\nA:", " 3 + 4 = 7. The answer is 7.\n\n"),
    TrainExample("Q: What is 12 + 9?\nA:", " 12 + 9 = 21. The answer is 21.\n\n"),
    TrainExample("Q: What is 5 + 5?\nA:", " The answer is 10.\n\n"),
]


def _trainer(**kw):
    kw = {"learning_rate": 5e-3, "warmup_steps": 1, "batch_size": 3, "micro_batch_size": 3, **kw}
    return get_trainer(TrainingConfig(**kw), seed=0)


def test_targets_cover_exactly_the_completion(random_model):
    tok = AutoTokenizer.from_pretrained(random_model)
    seqs = _trainer()._tokenize(tok, EXAMPLES)
    for (ids, targets), e in zip(seqs, EXAMPLES):
        completion = tok(e.completion, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(targets)
        assert [t for t in targets if t != -100] == completion  # each completion token once
        assert targets[-1] == -100  # nothing after the last token
        first = targets.index(completion[0])  # predicted from the last prompt token
        assert first == len(ids) - len(completion) - 1


@pytest.mark.parametrize("row_tokens", [512, 30])
def test_packed_rows_equal_separate_sequences(random_model, row_tokens):
    """Positions restarting per sequence give block-diagonal attention: no cross-talk, in one
    row or in several padded rows."""
    tok = AutoTokenizer.from_pretrained(random_model)
    seqs = _trainer()._tokenize(tok, EXAMPLES)
    model = AutoModelForCausalLM.from_pretrained(random_model, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids, positions, where, labels, pads = _pack(seqs, "cpu", row_tokens)
    assert ids.shape[0] == (1 if row_tokens == 512 else 3)
    assert ids.numel() - pads == sum(len(x) for x, _ in seqs)
    with torch.no_grad():
        packed = _loss_logits(model, ids, positions, where)  # as the trainer calls it
        alone = torch.cat([
            model(input_ids=torch.tensor([x])).logits[0][[i for i, t in enumerate(y) if t != -100]]
            for x, y in seqs
        ])
    assert labels.tolist() == [t for _, y in seqs for t in y if t != -100]
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_gradient_added_in_place_equals_autograds(random_model, tied):
    """The lookup's gradient added row by row into the weight's (one process) is exactly
    autograd's dense one, tied to the output layer or not, the padding row excepted as
    nn.Embedding does."""
    tok = AutoTokenizer.from_pretrained(random_model)
    ids, positions, where, labels, pads = _pack(_trainer()._tokenize(tok, EXAMPLES), "cpu", 30)
    assert pads > 0  # several rows, padded with token 0: the padding row below is exercised
    grads = []
    for in_place in (False, True):
        torch.manual_seed(0)  # the untied output layer is initialised afresh: alike both times
        model = AutoModelForCausalLM.from_pretrained(random_model, dtype=torch.float32,
                                                     attn_implementation="eager", tie_word_embeddings=tied)
        model.get_input_embeddings().padding_idx = 0
        loss_model = _LossModel(model, embedding_in_place=in_place)
        assert loss_model.in_place is in_place
        loss = torch.nn.functional.cross_entropy(loss_model(ids, positions, where), labels)
        loss.backward()
        loss_model.embedding_backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(g is not None for g in grads[1].values())
    for name, grad in grads[0].items():  # the same additions in the same order: bit for bit
        assert torch.equal(grads[1][name], grad), name


@pytest.mark.parametrize("bf16", [False, True])
def test_training_lowers_the_loss_and_reports_utilisation(random_model, tmp_path, bf16):
    result = _trainer(bf16=bf16).train(random_model, EXAMPLES, steps=15, out_dir=tmp_path)
    assert result.losses[-1] < 0.5 * result.losses[0]
    tok = AutoTokenizer.from_pretrained(random_model)
    n_tokens = sum(len(tok(e.prompt + e.completion)["input_ids"]) for e in EXAMPLES)
    assert abs(result.tokens - 15 * n_tokens) <= 15 * len(EXAMPLES)  # packed: no padding counted
    x = result.extra
    assert x["padding_tokens"] == 0 and x["bf16"] is bf16  # three short examples: one row
    assert 0 < x["mfu"] and 0 < x["hardware_flop_utilisation"] <= x["mfu"]
    assert x["peak_dtype"] == ("bfloat16" if bf16 else "float32")
    json.dumps(x)  # the loop writes it into train.json
    # the checkpoint holds the fp32 master weights, and they moved
    saved = load_file(Path(tmp_path) / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())
    before = AutoModelForCausalLM.from_pretrained(random_model).state_dict()
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(saved[name], before[name])
    if bf16:  # not just the bf16 rounding of them
        assert not torch.equal(saved[name], saved[name].bfloat16().float())


def test_too_long_sequence_is_a_clear_error(random_model, tmp_path):
    with pytest.raises(SequenceTooLongError, match="max_seq_len"):
        _trainer(max_seq_len=8).train(random_model, EXAMPLES, steps=1, out_dir=tmp_path)


def test_flop_accounting():
    assert model_flops_per_token(100, 100) == 600  # 6N
    assert model_flops_per_token(100, 10) == 420  # LoRA: no gradient for frozen weights
    # full fine-tune: the output layer (40 of 100) runs on 3 loss positions out of 10 tokens
    assert computed_flops(100, 100, 40, tokens=10, loss_tokens=3) == 6 * 60 * 10 + 6 * 40 * 3
    assert 0 < matmul_peak_tflops(torch.float32, "cpu", 256) < 100


def test_matmul_peak_is_quick_even_where_bf16_is_emulated():
    # Without AVX-512 BF16 one 2048-square bf16 product takes ~50 s; the peak must not wait for it.
    start = time.perf_counter()
    assert matmul_peak_tflops(torch.bfloat16, "cpu") > 0
    assert time.perf_counter() - start < 10


def test_lora_trains_through_the_same_loop(random_model, tmp_path):
    result = _trainer(method="lora", lora_r=4, learning_rate=2e-2).train(random_model, EXAMPLES, 10, tmp_path)
    assert result.losses[-1] < result.losses[0]
    assert (Path(tmp_path) / "adapter_config.json").exists()
    assert 0 < result.extra["hardware_flop_utilisation"] <= result.extra["mfu"]
