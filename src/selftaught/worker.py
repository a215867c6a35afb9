"""One process of a stage's process group: ``python -m selftaught.worker SPEC.json``.

Started by ``accelerate launch`` or ``torchrun`` (see ``launch.py``), never by hand. Every
process runs the same stage on its share; only the main process writes the result, beside the
spec, under a temporary name first so the driver never reads half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from selftaught.allocator import tune_allocator
from selftaught.config import GenerationConfig, ModelConfig, TrainingConfig, from_dict


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # as the command line that started this process did
    (spec_path,) = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    result = {"fine_tune": fine_tune, "generate": generate}[spec["stage"]](spec)
    if result is not None:  # the main process only
        out = Path(spec["result"])
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, out)
    return 0


def fine_tune(spec: dict[str, Any]) -> dict[str, Any] | None:
    from selftaught.training import TrainExample, get_trainer

    training = from_dict(TrainingConfig, spec["training"], "training.")
    trainer = get_trainer(training, spec["seed"])
    examples = [TrainExample(p, c) for p, c in spec["examples"]]
    result = trainer.train(spec["base_model"], examples, spec["steps"], Path(spec["out_dir"]))
    return dataclasses.asdict(result) if _rank() == 0 else None


def generate(spec: dict[str, Any]) -> dict[str, Any] | None:
    """This process's contiguous share of the prompts; the main process gathers all shares."""
    import torch
    import torch.distributed as dist

    from selftaught.generation import SamplingParams, get_generator

    rank, world = _rank(), int(os.environ.get("WORLD_SIZE", "1"))
    prompts, seeds = spec["prompts"], spec.get("seeds")
    lo, hi = rank * len(prompts) // world, (rank + 1) * len(prompts) // world
    if torch.cuda.is_available():  # one GPU per process ("cuda" is the current device)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    generator = get_generator(spec["model_path"], from_dict(ModelConfig, spec["model"], "model."),
                              from_dict(GenerationConfig, spec["generation"], "generation."))
    params = SamplingParams(**{**spec["params"], "stop": tuple(spec["params"]["stop"])})
    kwargs = {"seeds": seeds[lo:hi]} if seeds is not None else {}
    mine = generator.generate(prompts[lo:hi], params, desc=f"{spec['desc']} [{rank}/{world}]", **kwargs)
    generator.close()
    shares: list[Any] = [None] * world
    if world > 1:
        dist.init_process_group("gloo")  # a few kB of text: the CPU backend does, GPUs or not
        dist.gather_object([[dataclasses.asdict(c) for c in r] for r in mine], shares if rank == 0 else None)
        dist.destroy_process_group()
    else:
        shares = [[[dataclasses.asdict(c) for c in r] for r in mine]]
    if rank:
        return None
    return {"completions": [r for share in shares for r in share], "stats": dataclasses.asdict(generator.stats)}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


if __name__ == "__main__":
    sys.exit(main())
