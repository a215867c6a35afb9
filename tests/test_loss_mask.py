"""The fine-tuning loss is on the rationale and answer only, never on the prompt."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftaught.config import TrainingConfig
from selftaught.training import TrainExample, get_trainer

EXAMPLES = [
    TrainExample("Q: What is 2 + 3?\nA:", " 2 + 3 = 5. The answer is 5.\n\n"),
    TrainExample("Q: What is 41 + 17?\nA:", " 41 + 17 = 58. The answer is 58.\n\n"),
    TrainExample("Q: What is 9 + 9?\nA:", " The answer is 18.\n\n"),
]


def test_prompt_tokens_are_masked(tiny_model):
    trainer = get_trainer(TrainingConfig())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for (ids, targets), e in zip(trainer._tokenize(tokenizer, EXAMPLES), EXAMPLES):
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(e.completion, add_special_tokens=False)["input_ids"]
        assert ids == p + c
        # position t is trained to predict token t+1: only completion tokens are ever targets
        assert targets == [-100] * (len(p) - 1) + c + [-100]


def _nll(model, tokenizer, completion_only: bool) -> float:
    total, count = 0.0, 0
    for e in EXAMPLES:
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(e.completion, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        targets = ids[0, 1:]
        nll = -logp[torch.arange(len(targets)), targets]
        nll = nll[len(p) - 1 :] if completion_only else nll
        total, count = total + nll.sum().item(), count + len(nll)
    return total / count


def test_first_step_loss_is_the_completion_nll(tiny_model, tmp_path):
    config = TrainingConfig(batch_size=3, micro_batch_size=3, bf16=False, learning_rate=1e-3)
    result = get_trainer(config).train(tiny_model, EXAMPLES, steps=1, out_dir=tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    completion_nll = _nll(model, tokenizer, completion_only=True)
    assert abs(result.losses[0] - completion_nll) < 1e-4
    assert abs(result.losses[0] - _nll(model, tokenizer, completion_only=False)) > 1e-2
