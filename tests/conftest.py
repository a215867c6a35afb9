"""A tiny randomly initialised Llama and a byte-level BPE tokenizer, built here (no download).

``tiny_model`` is that model after a few seconds of training on the addition format, so the
loop tests see a model that is right sometimes, as STaR needs; ``random_model`` is untrained.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from selftaught.config import TrainingConfig
from selftaught.tasks import get_task
from selftaught.training import TrainExample, get_trainer


def _tokenizer() -> PreTrainedTokenizerFast:
    rng = random.Random(0)
    corpus = [f"Q: What is {rng.randint(0, 99)} + {rng.randint(0, 99)}? (Hint: the answer is 7.)\n"
              f"A: 1 + 2 = 3. The answer is 3.\n\n" for _ in range(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")


def _random_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("random-model")
    tokenizer = _tokenizer()
    _random_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, random_model) -> str:
    """The random model trained briefly on 1-digit addition in the task's own format.

    It sees all 100 one-digit problems, held-out ones too: a model this small memorises rather
    than generalises, and the loop tests need one that is right sometimes on any split."""
    task = get_task("addition", {"digits_min": 1, "digits_max": 1})
    examples = [
        TrainExample(task.prompt(e, hint=hint),
                     task.format_answer(f"{e.question} = {e.answer}.", e.answer) + "\n\n")
        for e in task.load("train", 84, seed=123) + task.load("test", 16, seed=123) for hint in (False, True)
    ]
    trainer = get_trainer(TrainingConfig(learning_rate=3e-3, warmup_steps=5, batch_size=16,
                                         micro_batch_size=16, bf16=False), seed=0)
    out = tmp_path_factory.mktemp("tiny-model")
    trainer.train(random_model, examples, steps=300, out_dir=Path(out))
    return str(out)
