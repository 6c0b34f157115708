"""``kdviz demo``: distil the embedded teacher into small students with every method, record, compare.

Every method trains a fresh copy of the same initial student for the same budget, is recorded under
``<out>/<method>/`` and evaluated on the test split (greedy decoding, exact match and ROUGE-L x100).
The table has the teacher and the untrained students for reference, and each run's training time; it is
written to ``<out>/results.csv`` and, with every run, to the static report ``<out>/report.html``.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from torch import nn

from kdviz import methods
from kdviz.record import Recorder
from kdviz.train.evaluate import evaluate
from kdviz.train.loop import TrainConfig, distill


@dataclass(frozen=True)
class DemoMethod:
    """A row of the demo: how to build the method, and which student (tokenizer pair) it trains.

    ``build(student, teacher, student_tokenizer, teacher_tokenizer)`` returns the method module.
    """

    pair: str  # "same": the teacher's tokenizer; "cross": the student's own tokenizer
    build: Callable[..., nn.Module]
    label: str


DEMO_METHODS: dict[str, DemoMethod] = {
    "sft": DemoMethod("same", lambda s, t, *_: methods.SFT(s, t), "SFT (no teacher)"),
    "fkl": DemoMethod("same", lambda s, t, *_: methods.VanillaKD(s, t, divergence="fkl"), "VanillaKD fkl"),
    "akl": DemoMethod("same", lambda s, t, *_: methods.VanillaKD(s, t, divergence="akl"), "VanillaKD akl"),
    "dskd": DemoMethod("same", lambda s, t, *_: methods.DSKD(s, t), "DSKD"),
    "sft-cross": DemoMethod("cross", lambda s, t, *_: methods.SFT(s, t), "SFT (no teacher)"),
    "cma": DemoMethod("cross", lambda s, t, *_: methods.CMA(s, t), "DSKD + CMA"),
    "uld": DemoMethod("cross", lambda s, t, *_: methods.ULD(s, t), "ULD"),
    "mined": DemoMethod(
        "cross",
        lambda s, t, s_tok, t_tok: methods.MinED(s, t, student_tokenizer=s_tok, teacher_tokenizer=t_tok),
        "MinED",
    ),
    "multilevel_ot": DemoMethod("cross", lambda s, t, *_: methods.MultiLevelOT(s, t), "MultiLevelOT"),
}


@dataclass
class DemoSetup:
    """The models, tokenizers and data a demo runs on (the embedded default, or the user's)."""

    teacher: nn.Module
    teacher_tokenizer: object
    students: dict[str, tuple[nn.Module, object]]  # pair -> (initial student, its tokenizer)
    train: list[dict]
    test: list[dict]
    names: dict[str, str]  # what to call the models in the table


def check_methods(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; valid methods: {', '.join(DEMO_METHODS)}")
    return names


def _score(model, tokenizer, examples, batch_size: int) -> dict:
    summary, _ = evaluate(model, tokenizer, examples, greedy=True, batch_size=batch_size, max_new_tokens=32,
                          progress=False)
    return {"rouge_l": summary["rouge_l"], "exact_match": summary["exact_match"]}


def run_demo(
    setup: DemoSetup,
    method_names: list[str],
    out: str | Path,
    config: TrainConfig,
    *,
    eval_examples: int = 500,
    every: int = 10,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Train every method in ``method_names`` and return the results table (also written to results.csv)."""
    check_methods(method_names)
    out = Path(out)
    test = setup.test[:eval_examples]
    rows = []
    started = time.perf_counter()
    log(f"Evaluating the teacher on {len(test)} test examples ...")
    rows.append({"method": "teacher", "pair": "-", **_score(setup.teacher, setup.teacher_tokenizer, test, 64),
                 "train_s": float("nan")})
    for pair in sorted({DEMO_METHODS[n].pair for n in method_names}):
        student, tokenizer = setup.students[pair]
        rows.append({"method": "untrained student", "pair": pair, **_score(student, tokenizer, test, 64),
                     "train_s": float("nan")})
    for name in method_names:
        spec = DEMO_METHODS[name]
        initial, tokenizer = setup.students[spec.pair]
        student = copy.deepcopy(initial)
        method = spec.build(student, setup.teacher, tokenizer, setup.teacher_tokenizer)
        pair_tokenizers = (tokenizer, None) if spec.pair == "same" else (tokenizer, setup.teacher_tokenizer)
        collator = methods.KDCollator(*pair_tokenizers)
        meta = {"method": name, "label": spec.label, "pair": spec.pair, "config": vars(config),
                "teacher": setup.names["teacher"], "student": setup.names[spec.pair]}
        tokenizers = {"student": tokenizer, "teacher": setup.teacher_tokenizer}
        with Recorder(out / name, every=every, samples=2, meta=meta, overwrite=True, tokenizers=tokenizers) as recorder:
            result = distill(method, collator, setup.train, config, recorder=recorder, progress=progress,
                             description=f"{name:>10}")
        scores = _score(student, tokenizer, test, 64)
        rows.append({"method": name, "pair": spec.pair, **scores, "train_s": result.seconds})
        log(f"{name:>10}: ROUGE-L {scores['rouge_l']:.1f}, exact match {scores['exact_match']:.1f} "
            f"({result.seconds:.0f} s)")
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    from kdviz.record import open_run
    from kdviz.viz import report

    report({name: open_run(out / name) for name in method_names}, out / "report.html", title="kdviz demo")
    log(f"Total {time.perf_counter() - started:.0f} s; report: {out / 'report.html'}")
    return table


def default_setup(teacher: str | None = None, student: str | None = None) -> DemoSetup:
    """The embedded default, with the teacher and/or the student replaced by any HF id or local path.

    A replacement student goes to the "same" pair when its tokenizer's vocabulary equals the teacher's,
    to the "cross" pair otherwise.
    """
    from kdviz import assets

    tokenizers = {name: load_tokenizer_from(name) for name in (teacher, student) if name}  # fail before loading
    default = assets.load_default()
    names = {"teacher": "embedded GPT-2 teacher", "same": "embedded Llama student (teacher tokenizer)",
             "cross": "embedded Llama student (own tokenizer)"}
    teacher_model, teacher_tok = default.teacher, default.teacher_tokenizer
    if teacher:
        teacher_model, teacher_tok = _load(teacher), tokenizers[teacher]
        names["teacher"] = teacher
    students = {"same": (default.student_same, default.teacher_tokenizer),
                "cross": (default.student_cross, default.student_tokenizer)}
    if student:
        tok = tokenizers[student]
        pair = "same" if tok.get_vocab() == teacher_tok.get_vocab() else "cross"
        students[pair] = (_load(student), tok)
        names[pair] = student
    return DemoSetup(teacher_model, teacher_tok, students, default.train, default.test, names)


def _pretrained(loader: Callable, name: str, what: str):
    """``loader.from_pretrained`` of a local directory or a Hugging Face id, failing fast without network.

    A hub id is looked up in the local Hugging Face cache first; when it is not there and the hub is
    offline (``HF_HUB_OFFLINE``) or cannot be reached within seconds, the error says what to do.
    """
    path = Path(name).expanduser()
    if path.exists():
        try:
            return loader.from_pretrained(str(path), local_files_only=True)
        except OSError as err:
            raise FileNotFoundError(f"cannot load the {what} from the directory {path}: {err}") from err
    if name.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"cannot load the {what} {name!r}: the directory {path} does not exist")
    try:
        return loader.from_pretrained(name, local_files_only=True)  # the local cache: no network
    except OSError:
        pass
    todo = (f"download it where there is network (`hf download {name}`) and copy the Hugging Face cache, "
            "or pass a local directory")
    if _hub_offline():
        raise FileNotFoundError(f"cannot load the {what} {name!r}: it is neither a local directory nor in the "
                                f"Hugging Face cache, and HF_HUB_OFFLINE is set; {todo}")
    host = _unreachable_hub()
    if host:
        raise FileNotFoundError(f"cannot load the {what} {name!r}: it is neither a local directory nor in the "
                                f"Hugging Face cache, and {host} cannot be reached; {todo}")
    try:
        return loader.from_pretrained(name)
    except OSError as err:
        raise FileNotFoundError(f"cannot load the {what} {name!r} (a Hugging Face id or a local path): {err}") from err


def _hub_offline() -> bool:
    from huggingface_hub import constants

    legacy = os.environ.get("TRANSFORMERS_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or legacy


def _unreachable_hub(timeout: float = 3.0) -> str | None:
    """The hub's host name when a connection to it fails within ``timeout`` seconds, else None."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return None
    except OSError:
        return url.hostname


def _load(name: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return _pretrained(AutoModelForCausalLM, name, "model").eval()


def load_tokenizer_from(name: str):
    """A fast tokenizer from a Hugging Face id or a local directory (pad token set to EOS when missing)."""
    from transformers import AutoTokenizer

    tokenizer = _pretrained(AutoTokenizer, name, "tokenizer")
    if not tokenizer.is_fast:
        raise TypeError(f"the tokenizer of {name!r} is not a fast tokenizer; kdviz needs character offsets")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
