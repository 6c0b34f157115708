"""Generate kdviz's embedded instruction -> response dataset (deterministic).

The dataset is a set of templated tasks over a small generated world, small enough for a model of a few
million parameters to learn on a laptop CPU, with answers that can be checked (exact match) and scored
(ROUGE-L). Tasks:

- ``arith_digits``: addition, subtraction and multiplication with digits ("What is 23 plus 58?" -> "81").
- ``arith_words``: the same with number words ("What is seven plus five? Answer in words." -> "twelve").
- ``count``: counting items in a short list ("Count the pears in: pear, fig, pear." -> "two pears").
- ``reverse``: reversing the order of 3-6 words (multi-word answers).
- ``units``: unit conversion with fixed factors ("How many minutes are in 3 hours?" -> "180 minutes").
- ``facts``: questions about the generated people and towns ("Where does Mira Tolsen live?").
- ``describe``: one-sentence descriptions of a person or a town composed of their facts.
- ``mention`` (only in a training split, and only when ``--train-mix`` asks for it): a question with several
  right answers ("Name one thing about Mira Tolsen." -> one of her town, job, pet and colour, drawn at random).

People and towns are facts to be learnt: every person and town of the world is described in the training
split, and dev/test ask about the same world. For the other tasks the dev and test prompts never occur in
the training split. Output: ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (one JSON object per line with
``prompt``, ``response`` and ``task``) and ``world.json`` (the generated world).

The world, dev and test are drawn before the training split, so ``--train-mix`` (task weights of the training
split only, e.g. ``facts=0.08,mention=0.12``) changes the training split and nothing else.

Usage: ``python scripts/make_data.py [--out data] [--seed 0] [--train 20000 --dev 500 --test 500]
[--train-mix TASK=WEIGHT,...]``
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

SYLLABLES = ["ka", "lo", "mi", "ren", "to", "va", "sel", "dor", "ni", "bra", "tul", "fen", "ro", "sa",
             "mar", "li", "quo", "zen", "ta", "vel", "gri", "pa", "nor", "esh"]
JOBS = ["baker", "farmer", "teacher", "painter", "doctor", "sailor", "miner", "weaver", "singer", "smith"]
PETS = ["cat", "dog", "parrot", "goat", "rabbit", "horse", "turtle", "owl"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
TOWN_SIZES = ["small", "large", "quiet", "busy", "old"]
TOWN_PLACES = ["by the sea", "in the hills", "near the forest", "on a river", "in the desert"]
WORDS = ["apple", "river", "stone", "green", "quick", "fox", "moon", "sings", "under", "bright", "cold",
         "house", "blue", "tree", "runs", "small", "bird", "over", "light", "sand", "warm", "boat", "red",
         "cloud", "jumps", "old", "wind", "fish", "happy", "road", "rain", "star", "slow", "door", "king",
         "tall", "leaf", "sleeps", "wolf", "hill"]
ITEMS = ["apple", "pear", "plum", "fig", "lemon", "cherry", "grape", "melon"]
PLURALS = {"cherry": "cherries"}
UNITS = [  # (from, to, factor, largest amount)
    ("kilometres", "metres", 1000, 20), ("kilograms", "grams", 1000, 20), ("litres", "millilitres", 1000, 20),
    ("hours", "minutes", 60, 12), ("minutes", "seconds", 60, 12), ("days", "hours", 24, 10),
    ("weeks", "days", 7, 12), ("feet", "inches", 12, 12), ("years", "months", 12, 12),
]
MIX = {"arith_digits": 0.15, "arith_words": 0.12, "count": 0.12, "reverse": 0.15, "units": 0.14,
       "facts": 0.20, "describe": 0.12}
WORLD_TASKS = ("facts", "describe", "mention")


def number_words(n: int) -> str:
    """English words for ``0 <= n < 100`` ("thirty-one")."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("" if ones == 0 else "-" + ONES[ones])


def article(word: str) -> str:
    """``word`` with its indefinite article ("an old", "a small")."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_name(rng: random.Random, parts: tuple[int, int]) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*parts))).capitalize()


def make_world(rng: random.Random, n_people: int = 40, n_towns: int = 8) -> dict:
    """Generate towns and people with unique names and random attributes."""
    names: set[str] = set()

    def unique(parts: tuple[int, int]) -> str:
        while True:
            name = make_name(rng, parts)
            if name not in names and len(name) > 2:
                names.add(name)
                return name

    towns = [{"name": unique((2, 3)), "size": rng.choice(TOWN_SIZES), "place": rng.choice(TOWN_PLACES)}
             for _ in range(n_towns)]
    people = [{"name": f"{unique((1, 2))} {unique((2, 2))}", "town": rng.choice(towns)["name"],
               "job": rng.choice(JOBS), "pet": rng.choice(PETS), "colour": rng.choice(COLOURS)}
              for _ in range(n_people)]
    return {"towns": towns, "people": people}


def arith_digits(rng: random.Random, world: dict) -> tuple[str, str]:
    op = rng.choice(["plus", "minus", "times"])
    if op == "times":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        result = a * b
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if op == "minus":
            a, b = max(a, b), min(a, b)
        result = a + b if op == "plus" else a - b
    symbol = {"plus": "+", "minus": "-", "times": "*"}[op]
    prompt = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {symbol} {b}.", f"Calculate {a} {op} {b}."])
    return prompt, str(result)


def arith_words(rng: random.Random, world: dict) -> tuple[str, str]:
    op = rng.choice(["plus", "minus"])
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if op == "minus":
        a, b = max(a, b), min(a, b)
    result = a + b if op == "plus" else a - b
    wa, wb = number_words(a), number_words(b)
    prompt = rng.choice([f"What is {wa} {op} {wb}? Answer in words.", f"Say in words: {wa} {op} {wb}.",
                         f"What is {a} {op} {b}? Answer in words."])
    return prompt, number_words(result)


def count(rng: random.Random, world: dict) -> tuple[str, str]:
    items = [rng.choice(ITEMS) for _ in range(rng.randint(3, 7))]
    listing = ", ".join(items)
    if rng.random() < 0.5:
        target = rng.choice(items)
        n = items.count(target)
        if rng.random() < 0.5:
            return f"How many times does {target} appear in: {listing}?", str(n)
        noun = target if n == 1 else PLURALS.get(target, target + "s")
        return f"Count the {PLURALS.get(target, target + 's')} in: {listing}.", f"{number_words(n)} {noun}"
    prompt = rng.choice([f"How many items are in this list: {listing}?", f"Count the items: {listing}."])
    return prompt, str(len(items))


def reverse(rng: random.Random, world: dict) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 6))
    prompt = rng.choice([f"Reverse the words: {' '.join(words)}", f"Write backwards: {' '.join(words)}"])
    return prompt, " ".join(reversed(words))


def units(rng: random.Random, world: dict) -> tuple[str, str]:
    src, dst, factor, largest = rng.choice(UNITS)
    n = rng.randint(2, largest)
    prompt = rng.choice([f"Convert {n} {src} to {dst}.", f"How many {dst} are in {n} {src}?"])
    return prompt, f"{n * factor} {dst}"


def facts(rng: random.Random, world: dict) -> tuple[str, str]:
    if rng.random() < 0.15:
        town = rng.choice(world["towns"])
        if rng.random() < 0.5:
            return f"Where is {town['name']}?", f"{town['name']} is {town['place']}."
        return f"What kind of town is {town['name']}?", f"{town['name']} is {article(town['size'])} town."
    p = rng.choice(world["people"])
    name = p["name"]
    kind = rng.choice(["town", "job", "pet", "colour"])
    if kind == "town":
        return rng.choice([f"Where does {name} live?", f"Which town is {name} from?"]), p["town"]
    if kind == "job":
        return rng.choice([f"What is {name}'s job?", f"What does {name} do for a living?"]), article(p["job"])
    if kind == "pet":
        return rng.choice([f"What pet does {name} have?", f"Which pet is {name}'s?"]), article(p["pet"])
    return rng.choice([f"What is {name}'s favourite colour?", f"Which colour does {name} like?"]), p["colour"]


def describe(rng: random.Random, world: dict) -> tuple[str, str]:
    if rng.random() < 0.2:
        t = rng.choice(world["towns"])
        return f"Describe the town {t['name']}.", f"{t['name']} is {article(t['size'])} town {t['place']}."
    p = rng.choice(world["people"])
    prompt = rng.choice([f"Describe {p['name']}.", f"Tell me about {p['name']}."])
    return prompt, (f"{p['name']} is {article(p['job'])} from {p['town']} who has {article(p['pet'])} "
                    f"and likes {p['colour']}.")


def mention(rng: random.Random, world: dict) -> tuple[str, str]:
    p = rng.choice(world["people"])
    prompt = rng.choice([f"Name one thing about {p['name']}.", f"Tell me one fact about {p['name']}.",
                         f"Say something about {p['name']}."])
    return prompt, rng.choice([p["town"], article(p["job"]), article(p["pet"]), p["colour"]])


TASKS: dict[str, Callable[[random.Random, dict], tuple[str, str]]] = {
    "arith_digits": arith_digits, "arith_words": arith_words, "count": count, "reverse": reverse,
    "units": units, "facts": facts, "describe": describe, "mention": mention,
}


def sample_split(rng: random.Random, world: dict, size: int, exclude: set[str],
                 mix: dict[str, float] = MIX) -> list[dict]:
    """``size`` examples following ``mix``; non-world prompts in ``exclude`` are skipped."""
    names, weights = list(mix), list(mix.values())
    rows: list[dict] = []
    while len(rows) < size:
        task = rng.choices(names, weights)[0]
        prompt, response = TASKS[task](rng, world)
        if task not in WORLD_TASKS and prompt in exclude:
            continue
        rows.append({"prompt": prompt, "response": response, "task": task})
    return rows


def build(seed: int = 0, n_train: int = 20000, n_dev: int = 500, n_test: int = 500,
          train_mix: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """Return the world and the three splits; the same ``seed`` always gives the same data.

    ``train_mix`` overrides the weights of ``MIX`` (and may add ``mention``) for the training split only.
    """
    unknown = sorted(set(train_mix or {}) - set(TASKS))
    if unknown:
        raise ValueError(f"train_mix: unknown tasks {unknown}; valid tasks: {', '.join(TASKS)}")
    if any(not weight >= 0 for weight in (train_mix or {}).values()):
        raise ValueError(f"train_mix: weights must be numbers >= 0, got {train_mix}")
    rng = random.Random(seed)
    world = make_world(rng)
    dev = sample_split(rng, world, n_dev, set())
    test = sample_split(rng, world, n_test, {r["prompt"] for r in dev})
    held_out = {r["prompt"] for r in dev + test}
    train = sample_split(rng, world, n_train, held_out, {**MIX, **(train_mix or {})})
    return {"world": world, "train": train, "dev": dev, "test": test}


def write(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps(data["world"], indent=1) + "\n")
    for split in ("train", "dev", "test"):
        with open(out / f"{split}.jsonl", "w") as f:
            for row in data[split]:
                f.write(json.dumps(row) + "\n")


def parse_mix(text: str) -> dict[str, float]:
    """``"facts=0.08,mention=0.12"`` -> ``{"facts": 0.08, "mention": 0.12}``."""
    try:
        return {task.strip(): float(weight) for task, weight in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT,... (e.g. facts=0.08,mention=0.12), got {text!r}") \
            from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--train-mix", type=parse_mix, default=None, metavar="TASK=WEIGHT,...",
                        help="task weights of the training split where they differ from MIX")
    args = parser.parse_args()
    data = build(args.seed, args.train, args.dev, args.test, args.train_mix)
    write(args.out, data)
    print(f"wrote {args.out}: " + ", ".join(f"{s}={len(data[s])}" for s in ("train", "dev", "test")))


if __name__ == "__main__":
    main()
