"""Score variants of ``kdviz demo``'s settings on the dev split, one seed: the exploration behind the README's
"Does distillation help on the embedded default?" (the test split stays for the final table).

Variants are demo methods (``kdviz.demo.run.DEMO_METHODS``), the same with the KD temperature of the DSKD
repository's scripts (``fkl-tau2``, ``dskd-tau2``, ``cma-tau2``: tau 2, CE and KD at 0.5 each), and sequence-level
KD (``seqkd``, ``seqkd-cross``: SFT on the teacher's greedy answers) and ``cma-warmN`` (CMA after N steps in which
only its projectors learn). Any of them with ``@CE,KD`` (``uld@1,0.25``)
weighs its CE and KD terms ``CE`` and ``KD`` instead of its own weights. ``--extra N`` gives every method but SFT the
next N prompts of the training split answered by the teacher's greedy generation instead of the gold response.
``--entropy`` prints the teacher's token entropy on the responses of training prompts and on its own answers to new
prompts (the non-world tasks, generated like ``scripts/make_data.py`` does).

Usage: ``OMP_NUM_THREADS=1 python scripts/explore_demo.py --train-examples 200 --extra 4000 sft seqkd fkl``
"""

from __future__ import annotations

import argparse
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from make_data import MIX, TASKS, WORLD_TASKS

from kdviz import methods
from kdviz.assets import default_paths, load_split
from kdviz.demo.run import DEMO_METHODS, DemoMethod, _train_one, default_setup
from kdviz.train.evaluate import format_prompt, generate
from kdviz.train.loop import TrainConfig

VARIANTS = {
    "seqkd": DemoMethod("same", lambda s, t, *_: methods.SFT(s, t), "SFT on the teacher's answers"),
    "seqkd-cross": DemoMethod("cross", lambda s, t, *_: methods.SFT(s, t), "SFT on the teacher's answers"),
    "fkl-tau2": DemoMethod("same", lambda s, t, *_: methods.VanillaKD(s, t, tau=2.0), "VanillaKD fkl (tau 2)"),
    "dskd-tau2": DemoMethod("same", lambda s, t, *_: methods.DSKD(s, t, tau=2.0), "DSKD (tau 2)"),
    "cma-tau2": DemoMethod("cross", lambda s, t, *_: methods.CMA(s, t, tau=2.0), "DSKD + CMA (tau 2)"),
}
GOLD_ONLY = ("sft", "sft-cross")  # the baselines train on the labelled examples only
WARM_UP_EXAMPLES: list[dict] = []  # what a warm-up variant's projectors see (the labelled examples, set by main)


def warmed_up(steps: int, lr: float = 3e-2) -> DemoMethod:
    """CMA whose projectors first learn alone for ``steps`` steps of 16 labelled examples (student frozen, AdamW
    at ``lr``: the recipe of notebook 02), before the usual joint training."""

    def build(student, teacher, student_tokenizer, teacher_tokenizer):
        cma = methods.CMA(student, teacher, tau=1.0)
        collate = methods.KDCollator(student_tokenizer, teacher_tokenizer)
        pairs = [(format_prompt(e["prompt"]), e["response"]) for e in WARM_UP_EXAMPLES]
        order = random.Random(0).sample(range(len(pairs)), len(pairs))
        student.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in cma.parameters() if p.requires_grad], lr=lr)
        for step in range(steps):
            picked = [pairs[order[(16 * step + k) % len(pairs)]] for k in range(16)]
            loss = cma(collate(picked)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        student.requires_grad_(True)
        return cma

    return DemoMethod("cross", build, f"DSKD + CMA, projectors warmed up for {steps} steps")


def named_variant(name: str) -> DemoMethod | None:
    """A demo method, one of VARIANTS or ``cma-warmN`` (CMA after an N-step projector warm-up); None if unknown."""
    if name.startswith("cma-warm") and name.removeprefix("cma-warm").isdigit():
        return warmed_up(int(name.removeprefix("cma-warm")))
    return DEMO_METHODS.get(name) or VARIANTS.get(name)


def weighted(name: str) -> DemoMethod:
    """The variant ``name``, or for ``"<variant>@CE,KD"`` that variant with CE weight ``CE`` and KD weight ``KD``."""
    base, _, weights = name.partition("@")
    spec = named_variant(base)
    if not weights:
        return spec
    ce_weight, kd_weight = (float(w) for w in weights.split(","))

    def build(*args):
        method = spec.build(*args)
        method.ce_weight, method.kd_weight = ce_weight, kd_weight
        return method

    return DemoMethod(spec.pair, build, f"{spec.label} (CE {ce_weight:g}, KD {kd_weight:g})")


def teacher_answered(setup, examples: list[dict]) -> list[dict]:
    """``examples`` with their response replaced by the teacher's greedy answer."""
    answers = generate(setup.teacher, setup.teacher_tokenizer, [e["prompt"] for e in examples], batch_size=64,
                       max_new_tokens=48, progress=False)
    return [{**e, "response": a} for e, a in zip(examples, answers, strict=True)]


def new_prompts(seen: set[str], count: int, seed: int = 12345) -> list[dict]:
    """``count`` prompts of the non-world tasks that are not in ``seen``, drawn as the data set's mix."""
    rng, tasks = random.Random(seed), [t for t in MIX if t not in WORLD_TASKS]
    prompts: list[dict] = []
    while len(prompts) < count:
        task = rng.choices(tasks, [MIX[t] for t in tasks])[0]
        prompt, _ = TASKS[task](rng, {})
        if prompt not in seen:
            seen.add(prompt)
            prompts.append({"prompt": prompt, "task": task})
    return prompts


@torch.inference_mode()
def response_entropy(setup, examples: list[dict]) -> torch.Tensor:
    """The teacher's entropy (nats) at every response token (and EOS) of ``examples``."""
    tokenizer, entropies = setup.teacher_tokenizer, []
    for example in examples:
        prompt = format_prompt(example["prompt"])
        ids = tokenizer(prompt + example["response"] + tokenizer.eos_token)["input_ids"]
        logp = setup.teacher(torch.tensor([ids])).logits[0].log_softmax(-1)
        entropies.append(-(logp.exp() * logp).sum(-1)[len(tokenizer(prompt)["input_ids"]) - 1:len(ids) - 1])
    return torch.cat(entropies)


def print_entropy(setup, dev: list[dict], count: int = 300) -> None:
    seen = {e["prompt"] for e in setup.train + setup.test + dev}
    trained = [e for e in setup.train if e["task"] not in WORLD_TASKS][:count]
    unseen = teacher_answered(setup, new_prompts(seen, count))
    for what, examples in (("the gold responses of training prompts", trained), ("its answers to new prompts", unseen)):
        h = response_entropy(setup, examples)
        print(f"teacher entropy on {what} ({count}, non-world tasks): mean {h.mean():.2f} nats, "
              f"median {h.median():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join([*DEMO_METHODS, *VARIANTS])}, cma-warmN")
    parser.add_argument("--train-examples", type=int, default=20000, help="labelled examples (the first N)")
    parser.add_argument("--extra", type=int, default=0, help="teacher-answered prompts for every method but SFT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entropy", action="store_true", help="the teacher's entropy on seen and new prompts")
    args = parser.parse_args()
    unknown = [v for v in args.variants if named_variant(v.partition("@")[0]) is None]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    full = default_setup()
    dev = load_split(default_paths().dev)
    if args.entropy:
        print_entropy(full, dev)
    labelled = full.train[:args.train_examples]
    WARM_UP_EXAMPLES[:] = labelled
    pool = full.train[args.train_examples:args.train_examples + args.extra]
    extra = teacher_answered(full, pool) if pool else []
    if pool:
        agree = sum(e["response"] == p["response"] for e, p in zip(extra, pool, strict=True)) / len(pool)
        print(f"the teacher's answer is the gold response on {100 * agree:.1f}% of the {len(pool)} extra prompts")
    config = TrainConfig(steps=args.steps, batch_size=16, lr=3e-3, method_lr=3e-3, seed=args.seed)
    DEMO_METHODS.update({name: weighted(name) for name in args.variants})
    with tempfile.TemporaryDirectory() as out:
        for name in args.variants:
            data = labelled if name.partition("@")[0] in GOLD_ONLY else labelled + extra
            scores, seconds = _train_one(replace(full, train=data), name, config, Path(out) / name, dev, 10, False)
            answered = len(data) - len(labelled)
            print(f"{name:>13}: dev ROUGE-L {scores['rouge_l']:.1f}, exact match {scores['exact_match']:.1f} "
                  f"({len(labelled)} labelled + {answered} teacher-answered, {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
