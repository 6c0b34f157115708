"""The ``kdviz`` command line: ``kdviz demo`` (distil the embedded teacher with every method), ``kdviz report``
(a static HTML report of recorded runs), ``kdviz inspect`` (the pre-flight comparison of two tokenizers),
``kdviz lab`` (JupyterLab on the notebooks) and ``kdviz toy`` (every divergence on toy distributions)."""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from kdviz.demo.toy import HEAD_TAIL_COLUMNS, divergence_table
from kdviz.divergences import DIVERGENCES


def toy(args: argparse.Namespace) -> None:
    """Print every divergence and the head/tail statistics on the toy teacher/student pairs."""
    table = divergence_table(args.mu)
    pd.set_option("display.width", 200)
    print("Toy teacher: an 80-class discretised half-Gaussian (sigma 16), as in the AKL paper.\n")
    print("Divergences (teacher p, student q, tau = 1; fkl = KL(p||q), rkl = KL(q||p)):")
    print(table[list(DIVERGENCES)].round(4).to_string())
    print(f"\nHead/tail of the teacher at mu = {args.mu} (gaps are sum |p - q| on each side; "
          "w_head is AKL's weight on FKL):")
    print(table[HEAD_TAIL_COLUMNS].round(4).to_string())
    print("\nFKL weighs the head (where p is large), RKL the tail (where q is large): compare the "
          "'head right' and 'tail right' rows.")


QUICK = {"steps": 40, "eval_examples": 100}


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line on stderr, exit status 2."""


def demo(args: argparse.Namespace) -> None:
    """Distil the teacher into the students with every method (once per seed); print the results table."""
    from kdviz.demo.run import DEMO_METHODS, check_methods, default_setup, run_demo
    from kdviz.train.loop import TrainConfig

    names = args.methods or list(DEMO_METHODS)
    steps = args.steps if args.steps is not None else QUICK["steps"] if args.quick else 300
    eval_examples = QUICK["eval_examples"] if args.quick else 500
    seeds = list(range(args.seed, args.seed + args.seeds))
    try:
        check_methods(names)
        method_lr = args.lr if args.method_lr is None else args.method_lr
        config = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, method_lr=method_lr, seed=args.seed)
        setup = default_setup(args.student, args.teacher, train_examples=args.train_examples)
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from error
    print(f"kdviz demo: {len(names)} methods x {steps} steps, batch {args.batch_size}, {len(setup.train)} "
          f"training examples, seeds {seeds}, evaluated on {eval_examples} test examples; runs under {args.out}/\n")
    table = run_demo(setup, names, args.out, config, seeds=seeds, eval_examples=eval_examples)
    pd.set_option("display.width", 200)
    print("\n" + format_results(table))
    print(f"\nRuns recorded under {args.out}/ (one directory per method); static report: {args.out}/report.html.")
    print("Explore the runs in JupyterLab (`.venv/bin/kdviz lab`): notebooks/05_comparing_methods.ipynb puts them "
          "side by side; kdviz.viz.dashboard(kdviz.open_run(path)) opens one.")


def format_results(table: pd.DataFrame) -> str:
    """The summary rows of a demo's results as text: mean ± std over seeds, the paired gain over SFT."""
    summary = table[table["seed"] == "mean"]
    several = int(summary["n_seeds"].max()) > 1

    def pm(mean, std):
        if pd.isna(mean):
            return "-"
        return f"{mean:.1f} ± {std:.1f}" if several and not pd.isna(std) else f"{mean:.1f}"

    shown = pd.DataFrame({
        "method": summary["method"], "pair": summary["pair"],
        "ROUGE-L": [pm(m, s) for m, s in zip(summary["rouge_l"], summary["rouge_l_std"], strict=True)],
        "exact match": [pm(m, s) for m, s in zip(summary["exact_match"], summary["exact_match_std"], strict=True)],
        "ROUGE-L - SFT (paired)": [pm(m, s) for m, s in zip(summary["gain_rouge_l"], summary["gain_rouge_l_std"],
                                                            strict=True)],
        "train s": summary["train_s"].round(0),
    })
    if several:
        shown["wins"] = [f"{w:.0f}/{n:.0f}" if not pd.isna(w) else "-"
                         for w, n in zip(summary["wins"], summary["n_seeds"], strict=True)]
    title = f"mean ± std over {int(summary['n_seeds'].max())} seeds; " if several else ""
    return (f"{title}ROUGE-L x100 on the test split; the paired gain is the difference with SFT of the same student "
            f"on the same seed\n" + shown.to_string(index=False))


def report(args: argparse.Namespace) -> None:
    """Write one self-contained HTML report of the recorded runs ``args.runs`` to ``args.output``."""
    from kdviz.record.reader import open_run
    from kdviz.viz.report import report as write_report

    try:
        runs = [open_run(path) for path in args.runs]  # labelled by method, numbered when repeated
    except ValueError as error:  # a damaged meta.json; missing directories are OSErrors
        raise UserError(str(error)) from error
    out = write_report(runs, args.output, title=args.title, max_steps=args.max_steps)
    print(f"kdviz report: {len(runs)} run(s) -> {out} ({out.stat().st_size / 1e6:.1f} MB, opens without network)")


def inspect(args: argparse.Namespace) -> None:
    """Compare how the student's and the teacher's tokenizers split texts (``kdviz.compare_tokenizers``)."""
    from kdviz.align import compare_tokenizers
    from kdviz.assets import default_paths, load_split, load_tokenizer
    from kdviz.train.evaluate import format_prompt

    paths = default_paths()
    student = load_tokenizer(args.student) if args.student else load_tokenizer(paths.student_tokenizer)
    teacher = load_tokenizer(args.teacher) if args.teacher else load_tokenizer(paths.teacher_tokenizer)
    if args.texts:
        texts = read_texts(args.texts)
    else:
        texts = [format_prompt(e["prompt"]) + e["response"] for e in load_split(paths.dev)]
    texts = texts[: args.limit]
    if not texts:
        raise SystemExit(f"kdviz inspect: no text to compare in {args.texts}")
    print(f"kdviz inspect: student {args.student or 'embedded'} (A) vs teacher {args.teacher or 'embedded'} (B) "
          f"on {len(texts)} texts\n")
    print(compare_tokenizers(student, teacher, texts))


def read_texts(path: str) -> list[str]:
    """The non-empty lines of the UTF-8 file ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except UnicodeDecodeError as error:
        raise UserError(f"--texts {path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    except OSError as error:
        raise UserError(f"--texts {path}: {error.strerror or error}") from error


def lab(args: argparse.Namespace) -> None:
    """Start JupyterLab on the notebooks directory (or ``args.directory``)."""
    import os
    import sys
    from pathlib import Path

    from kdviz.viz.lab import install_lab_settings, overrides_path

    directory = Path(args.directory or Path(__file__).resolve().parents[1] / "notebooks")
    if not directory.is_dir():
        raise SystemExit(f"kdviz lab: {directory} is not a directory")
    written = install_lab_settings()
    if written != [overrides_path()]:
        where = ", ".join(map(str, written))
        print(f"kdviz lab: {sys.prefix} is read-only; kdviz's JupyterLab settings went to {where}")
    os.execv(sys.executable, [sys.executable, "-m", "jupyterlab", f"--notebook-dir={directory}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kdviz", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="distil the embedded teacher with every method, compare")
    demo_parser.add_argument("--quick", action="store_true", help="a reduced budget: about a minute per method")
    demo_parser.add_argument("--methods", nargs="+", help="which methods (default: all)")
    demo_parser.add_argument("--steps", type=int, help="optimizer steps per method (default 300; --quick 40)")
    demo_parser.add_argument("--batch-size", type=int, default=16)
    demo_parser.add_argument("--train-examples", type=int,
                             help="train every method on the first N examples of the training split (default: all)")
    demo_parser.add_argument("--lr", type=float, default=3e-3, help="student learning rate")
    demo_parser.add_argument("--method-lr", type=float,
                             help="learning rate of the methods' projectors (DSKD, CMA; default: the student's)")
    demo_parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    demo_parser.add_argument("--seeds", type=int, default=1,
                             help="how many seeds (--seed, --seed + 1, ...): mean ± std and the paired gain over SFT")
    demo_parser.add_argument("--teacher", help="a Hugging Face id or local path instead of the embedded teacher")
    demo_parser.add_argument("--student", help="a Hugging Face id or local path instead of an embedded student")
    demo_parser.add_argument("--out", default="runs/demo", help="where the runs are recorded (default runs/demo)")
    demo_parser.set_defaults(run=demo)
    report_parser = commands.add_parser("report", help="write a self-contained HTML report of recorded runs")
    report_parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by kdviz.Recorder")
    report_parser.add_argument("-o", "--output", default="report.html", help="the HTML file (default report.html)")
    report_parser.add_argument("--title", default="kdviz report")
    report_parser.add_argument("--max-steps", type=int, default=10, help="recorded steps kept per stepped view")
    report_parser.set_defaults(run=report)
    inspect_parser = commands.add_parser("inspect", help="compare how two tokenizers split texts (pre-flight)")
    inspect_parser.add_argument("--student", help="a Hugging Face id or local path (default: the embedded student)")
    inspect_parser.add_argument("--teacher", help="a Hugging Face id or local path (default: the embedded teacher)")
    inspect_parser.add_argument("--texts", help="a UTF-8 file, one text per line (default: the embedded dev set)")
    inspect_parser.add_argument("--limit", type=int, default=500, help="at most this many texts (default 500)")
    inspect_parser.set_defaults(run=inspect)
    lab_parser = commands.add_parser("lab", help="start JupyterLab on the notebooks")
    lab_parser.add_argument("directory", nargs="?", help="where to start (default: the repository's notebooks/)")
    lab_parser.set_defaults(run=lab)
    toy_parser = commands.add_parser("toy", help="compare every divergence on toy teacher/student pairs")
    toy_parser.add_argument("--mu", type=float, default=0.5, help="head mass threshold (default 0.5)")
    toy_parser.set_defaults(run=toy)
    args = parser.parse_args(argv)
    problem = _check_arguments(args)
    try:
        if problem:
            raise UserError(problem)
        args.run(args)
    except (UserError, OSError) as error:  # OSError: missing files and directories, model loading, disk full
        print(f"kdviz {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the numbers given on the command line, or None."""
    if args.command == "toy" and not 0 < args.mu < 1:  # False for NaN too
        return f"--mu must be strictly between 0 and 1, got {args.mu}"
    if args.command == "inspect" and args.limit < 1:
        return f"--limit must be at least 1, got {args.limit}"
    if args.command == "report" and args.max_steps < 1:
        return f"--max-steps must be at least 1, got {args.max_steps}"
    if args.command == "demo":
        if args.steps is not None and args.steps < 1:
            return f"--steps must be at least 1, got {args.steps}"
        if args.seeds < 1:
            return f"--seeds must be at least 1, got {args.seeds}"
        if args.train_examples is not None and args.train_examples < 1:
            return f"--train-examples must be at least 1, got {args.train_examples}"
        if args.batch_size < 1:
            return f"--batch-size must be at least 1, got {args.batch_size}"
        if not (math.isfinite(args.lr) and args.lr > 0):
            return f"--lr must be a finite number > 0, got {args.lr}"
        if args.method_lr is not None and not (math.isfinite(args.method_lr) and args.method_lr > 0):
            return f"--method-lr must be a finite number > 0, got {args.method_lr}"
    return None


if __name__ == "__main__":
    main()
