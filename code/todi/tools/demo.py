"""The built-in demo: a small instruction dataset, a tokenizer and tiny random GPT-2 models, no downloads.

``python -m todi.tools.demo DIR`` writes::

    DIR/data/demo/{train,dev,valid}.jsonl   instruction data (MiniLLM's prompt template)
    DIR/models/{teacher,student}/           random GPT-2s (Hugging Face directories) with the tokenizer

The tasks are ones a model of a few million parameters learns in a couple of CPU minutes, so that
ROUGE-L visibly moves: look-ups (capitals, animal sounds, opposites, plurals, colours) and simple
transformations (reversing a list, sorting numbers, adding digits, first letters, repeating a
word). The tokenizer is a byte-level BPE trained on the demo's own text with the `tokenizers`
library: the demo needs nothing from ../shared or the internet, and a 1,000-token vocabulary
keeps the output layer (and the KD loss over it) cheap on a CPU, where GPT-2's 50,257 tokens would
make every step ~20× slower. Everything is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from todi.util.atomic import atomic_write_text

__all__ = ["PROMPT_TEMPLATE", "DemoError", "build_models", "build_tokenizer", "check_settings", "make_examples",
           "prepare", "prepare_dir"]

MARKER = ".todi-demo"  # in every directory the demo made: its data settings (the demo deletes no other directory)


class DemoError(ValueError):
    """A setting or a directory the demo refuses; the message names the variable and what to do."""


# The end of MiniLLM's Dolly template (the one in ../shared/data/dolly), without its 20-token preamble:
# half of every demo sequence would be that preamble.
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
EOS = "<|endoftext|>"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Brazil": "Brasilia", "Peru": "Lima", "Chile": "Santiago", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "India": "New Delhi",
    "Russia": "Moscow", "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin", "Cuba": "Havana",
}
SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink",
    "horse": "neigh", "owl": "hoot", "lion": "roar", "frog": "croak", "mouse": "squeak", "bee": "buzz",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late",
    "up": "down", "open": "closed", "full": "empty", "hard": "soft", "old": "young", "rich": "poor",
    "wet": "dry", "loud": "quiet", "strong": "weak", "high": "low",
}
PLURALS = {
    "child": "children", "mouse": "mice", "box": "boxes", "city": "cities", "knife": "knives",
    "man": "men", "tooth": "teeth", "bus": "buses", "leaf": "leaves", "baby": "babies", "foot": "feet",
    "dish": "dishes", "wolf": "wolves", "goose": "geese", "story": "stories", "glass": "glasses",
}
COLOURS = {
    "grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
    "a tomato": "red", "an orange": "orange", "a plum": "purple", "chocolate": "brown", "milk": "white",
    "a lemon": "yellow", "the sea": "blue",
}
WORDS = ["apple", "river", "stone", "cloud", "music", "garden", "window", "pencil", "rabbit", "candle",
         "mountain", "forest", "bridge", "silver", "planet", "ticket", "butter", "island", "rocket", "violin"]


def _capital(rng):
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."


def _sound(rng):
    animal = rng.choice(sorted(SOUNDS))
    return f"What sound does a {animal} make?", f"A {animal} says {SOUNDS[animal]}."


def _opposite(rng):
    word = rng.choice(sorted(OPPOSITES))
    return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."


def _plural(rng):
    noun = rng.choice(sorted(PLURALS))
    return f"What is the plural of {noun}?", f"The plural of {noun} is {PLURALS[noun]}."


def _colour(rng):
    thing = rng.choice(sorted(COLOURS))
    return f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {COLOURS[thing]}."


def _reverse(rng):
    words = rng.sample(WORDS, rng.randint(3, 4))
    return (f"Reverse the order of these words: {', '.join(words)}.", ", ".join(reversed(words)) + ".")


def _sort(rng):
    numbers = rng.sample(range(1, 100), rng.randint(3, 4))
    return (f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}.",
            ", ".join(map(str, sorted(numbers))) + ".")


def _add(rng):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def _first_letter(rng):
    word = rng.choice(WORDS)
    return f"What is the first letter of the word {word}?", f"The first letter of {word} is {word[0]}."


def _repeat(rng):
    word = rng.choice(WORDS)
    return f"Repeat the word {word} three times.", " ".join([word] * 3)


TASKS = (_capital, _sound, _opposite, _plural, _colour, _reverse, _sort, _add, _first_letter, _repeat)


def make_examples(n: int, seed: int) -> list[dict]:
    """``n`` records ``{"prompt", "output"}``, tasks in turn, contents drawn with ``seed``."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        instruction, answer = TASKS[i % len(TASKS)](rng)
        records.append({"prompt": PROMPT_TEMPLATE.format(instruction=instruction), "output": answer})
    rng.shuffle(records)
    return records


def build_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 1000):
    """Train a byte-level BPE on ``texts``; save it as a Hugging Face tokenizer (EOS = pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                      unk_token=EOS, model_max_length=1024)
    wrapped.save_pretrained(out_dir)
    return wrapped


def build_models(tokenizer, out_dir: str | Path, *, seed: int = 0, n_positions: int = 512) -> dict[str, Path]:
    """A 4-layer teacher and a 2-layer student (GPT-2 architecture, random weights), each saved
    with the tokenizer; 512 positions, so that the evaluation's default lengths (512 = 256 prompt +
    256 new tokens) fit. Returns their directories."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sizes = {"teacher": dict(n_layer=4, n_embd=192, n_head=4), "student": dict(n_layer=2, n_embd=128, n_head=4)}
    paths = {}
    for offset, (name, size) in enumerate(sizes.items()):
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, bos_token_id=tokenizer.eos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **size)
        torch.manual_seed(seed + offset)
        path = Path(out_dir) / name
        GPT2LMHeadModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def prepare(out_dir: str | Path, *, n_train: int = 2000, n_dev: int = 100, n_valid: int = 200, seed: int = 0) -> dict:
    """Write the demo's data and models under ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    splits = {"train": make_examples(n_train, seed), "dev": make_examples(n_dev, seed + 1),
              "valid": make_examples(n_valid, seed + 2)}
    data_dir = out_dir / "data" / "demo"
    for name, records in splits.items():
        _write_jsonl(data_dir / f"{name}.jsonl", records)
    texts = [r["prompt"] + r["output"] for r in splits["train"]]
    tokenizer = build_tokenizer(texts, out_dir / "tokenizer")
    models = build_models(tokenizer, out_dir / "models", seed=seed)
    return {"data": data_dir, **models}


# run_demo.sh's variables: whole numbers >= 1, switches, and the rest (checked below)
POSITIVE = ("NUM_TRAIN", "NUM_DEV", "NUM_VALID", "TEACHER_EPOCHS", "STUDENT_EPOCHS", "BATCH_SIZE", "EVAL_BATCH_SIZE", "NPROC",
            "LOG_INTERVAL")
SWITCHES = ("STUDENT_SFT", "RUN_EVAL", "CACHE_HIDDEN")
PRECISIONS = ("fp32", "bf16", "fp16")


def check_settings(env: Mapping[str, str]) -> None:
    """Check run_demo.sh's settings (as its environment holds them) before anything is built or
    trained; raises DemoError naming the first bad variable."""
    for name in POSITIVE:
        if not env.get(name, "").isdigit() or int(env[name]) < 1:
            raise DemoError(f"{name}={env.get(name, '')}: expected a whole number >= 1")
    for name in SWITCHES:
        if env.get(name) not in ("0", "1"):
            raise DemoError(f"{name}={env.get(name, '')}: expected 0 or 1")
    if env.get("FORCE", "") not in ("", "0", "1"):
        raise DemoError(f"FORCE={env['FORCE']}: expected 1 (start over) or empty")
    if env.get("PRECISION") not in PRECISIONS:
        raise DemoError(f"PRECISION={env.get('PRECISION', '')}: expected one of {', '.join(PRECISIONS)}")
    if env.get("CACHE_K", "") and not (env["CACHE_K"].isdigit() and int(env["CACHE_K"]) >= 1):
        raise DemoError(f"CACHE_K={env['CACHE_K']}: expected a whole number >= 1 (top-k), or empty")
    seeds = env.get("SEEDS", "").split()
    if not seeds or not all(seed.isdigit() for seed in seeds):
        raise DemoError(f"SEEDS={env.get('SEEDS', '')}: expected whole numbers separated by spaces")
    try:
        lr = float(env.get("LR", ""))
    except ValueError:
        lr = -1.0
    if not lr > 0:
        raise DemoError(f"LR={env.get('LR', '')}: expected a positive number")
    _check_kd(env)


def _check_kd(env: Mapping[str, str]) -> None:
    """KD_OBJ, PLUGINS, the objective's parameter variables and OBJ_ARGS, through the training's own
    flag parser (as scripts/train_launch.sh passes them: TODI_BETA -> --todi-beta, ...)."""
    from todi.objectives.registry import canonical_name
    from todi.training.args import build_parser, check_args, objective_flags
    from todi.util.plugins import load_plugins

    plugins = env.get("PLUGINS", "").split()
    try:
        load_plugins(plugins)
        canonical_name(env.get("KD_OBJ", ""))
    except (ImportError, OSError, ValueError) as e:
        raise DemoError(f"KD_OBJ={env.get('KD_OBJ', '')} (PLUGINS={' '.join(plugins)}): {e}") from None
    paths = ["--model-path", "--teacher-model-path", "--save-dir", "--data-dir", "--deepspeed_config"]
    argv = ["--do-train", *(x for flag in paths for x in (flag, ".")), "--lr", env["LR"], "--num-epochs", env["STUDENT_EPOCHS"], "--batch-size", env["BATCH_SIZE"],
            "--criterion", "various_divergence", "--kd-objective", env["KD_OBJ"]]
    for flag in objective_flags():
        variable = flag.lstrip("-").replace("-", "_").upper()
        if env.get(variable, ""):
            argv += [flag, env[variable]]
    argv += shlex.split(env.get("OBJ_ARGS", ""))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            check_args(build_parser().parse_args(argv))
    except SystemExit as e:
        said = (str(e.code) if isinstance(e.code, str) else stderr.getvalue()).strip().splitlines()
        reason = said[-1].split("error: ", 1)[-1] if said else "rejected"
        raise DemoError(f"KD_OBJ={env['KD_OBJ']} with its parameter variables and OBJ_ARGS: {reason}") from None


def prepare_dir(out_dir: str | Path, settings: dict, *, force: bool = False) -> bool:
    """Make ``out_dir`` ready for a demo built with ``settings``: True when it already holds one (its
    runs are kept), False when the data and models are to be built. Never touches a directory the
    demo did not make; with ``force`` deletes an earlier demo; refuses one built with other settings."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.is_file():
        raise DemoError(f"{out_dir} exists and was not made by the demo; set DEMO_DIR to another directory")
    if marker.is_file() and force:
        shutil.rmtree(out_dir)
    elif marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8") or "null")
        except json.JSONDecodeError:
            recorded = None
        if isinstance(recorded, dict) and recorded.get("complete") and recorded.get("settings") == settings:
            return True
        if isinstance(recorded, dict) and recorded.get("settings") != settings:
            raise DemoError(f"{out_dir} holds a demo built with other data settings ({_describe(recorded.get('settings'))}, "
                            f"not {_describe(settings)}); FORCE=1 deletes it and starts over, or set DEMO_DIR")
        if recorded is None:
            raise DemoError(f"{out_dir} holds a demo of an earlier version; FORCE=1 deletes it and starts over, "
                            "or set DEMO_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"settings": settings, "complete": False}) + "\n")
    return False


def _describe(settings) -> str:
    if not isinstance(settings, dict):
        return "unknown"
    return " ".join(f"{k.upper()}={v}" for k, v in settings.items())


def main(argv: list[str] | None = None) -> int:
    """``python -m todi.tools.demo DIR``: build (or reuse) the demo's data and models; ``--check``:
    check run_demo.sh's settings from the environment. 0, or 2 after one ``error:`` line."""
    parser = argparse.ArgumentParser(prog="python -m todi.tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", help="where data/ and models/ are written (required unless --check)")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-dev", type=int, default=100)
    parser.add_argument("--num-valid", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete an earlier demo in DIR and start over")
    parser.add_argument("--check", action="store_true",
                        help="only check run_demo.sh's settings (its variables, from the environment)")
    args = parser.parse_args(argv)
    if not args.check and args.out_dir is None:
        parser.error("give the output directory DIR")
    settings = {"num_train": args.num_train, "num_dev": args.num_dev, "num_valid": args.num_valid, "seed": args.seed}
    try:
        if args.check:
            check_settings(os.environ)
            return 0
        if prepare_dir(args.out_dir, settings, force=args.force):
            print(f"reusing the data and models in {args.out_dir} (earlier runs kept; FORCE=1 starts over)")
            return 0
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = prepare(args.out_dir, n_train=args.num_train, n_dev=args.num_dev, n_valid=args.num_valid, seed=args.seed)
    atomic_write_text(Path(args.out_dir) / MARKER, json.dumps({"settings": settings, "complete": True}) + "\n")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
