"""Score variants of ``kdviz demo``'s settings on the dev split, one seed: the exploration behind the README's
"Does distillation help on the embedded default?" (the test split stays for the final table).

Variants are demo methods (``kdviz.train.demo.DEMO_METHODS``), the same with the KD temperature of the DSKD
repository's scripts (``fkl-tau2``, ``dskd-tau2``, ``cma-tau2``: tau 2, CE and KD at 0.5 each), and sequence-level
KD (``seqkd``, ``seqkd-cross``: SFT on the teacher's greedy answers). ``--extra N`` gives every method but SFT the
next N prompts of the training split answered by the teacher's greedy generation instead of the gold response.

Usage: ``OMP_NUM_THREADS=1 python scripts/explore_demo.py --train-examples 200 --extra 4000 sft seqkd fkl``
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from kdviz import methods
from kdviz.assets import default_paths, load_split
from kdviz.train.demo import DEMO_METHODS, DemoMethod, _train_one, default_setup
from kdviz.train.evaluate import generate
from kdviz.train.loop import TrainConfig

VARIANTS = {
    "seqkd": DemoMethod("same", lambda s, t, *_: methods.SFT(s, t), "SFT on the teacher's answers"),
    "seqkd-cross": DemoMethod("cross", lambda s, t, *_: methods.SFT(s, t), "SFT on the teacher's answers"),
    "fkl-tau2": DemoMethod("same", lambda s, t, *_: methods.VanillaKD(s, t, tau=2.0), "VanillaKD fkl (tau 2)"),
    "dskd-tau2": DemoMethod("same", lambda s, t, *_: methods.DSKD(s, t, tau=2.0), "DSKD (tau 2)"),
    "cma-tau2": DemoMethod("cross", lambda s, t, *_: methods.CMA(s, t, tau=2.0), "DSKD + CMA (tau 2)"),
}
GOLD_ONLY = ("sft", "sft-cross")  # the baselines train on the labelled examples only


def teacher_answered(setup, examples: list[dict]) -> list[dict]:
    """``examples`` with their response replaced by the teacher's greedy answer."""
    answers = generate(setup.teacher, setup.teacher_tokenizer, [e["prompt"] for e in examples], batch_size=64,
                       max_new_tokens=48, progress=False)
    return [{**e, "response": a} for e, a in zip(examples, answers, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=[*DEMO_METHODS, *VARIANTS])
    parser.add_argument("--train-examples", type=int, default=20000, help="labelled examples (the first N)")
    parser.add_argument("--extra", type=int, default=0, help="teacher-answered prompts for every method but SFT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    full = default_setup()
    labelled = full.train[:args.train_examples]
    pool = full.train[args.train_examples:args.train_examples + args.extra]
    extra = teacher_answered(full, pool) if pool else []
    if pool:
        agree = sum(e["response"] == p["response"] for e, p in zip(extra, pool, strict=True)) / len(pool)
        print(f"the teacher's answer is the gold response on {100 * agree:.1f}% of the {len(pool)} extra prompts")
    dev = load_split(default_paths().dev)
    config = TrainConfig(steps=args.steps, batch_size=16, lr=3e-3, method_lr=3e-3, seed=args.seed)
    DEMO_METHODS.update(VARIANTS)
    with tempfile.TemporaryDirectory() as out:
        for name in args.variants:
            data = labelled if name in GOLD_ONLY else labelled + extra
            scores, seconds = _train_one(replace(full, train=data), name, config, Path(out) / name, dev, 10, False)
            answered = len(data) - len(labelled)
            print(f"{name:>13}: dev ROUGE-L {scores['rouge_l']:.1f}, exact match {scores['exact_match']:.1f} "
                  f"({len(labelled)} labelled + {answered} teacher-answered, {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
