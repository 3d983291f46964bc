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
import json
import random
from pathlib import Path

from todi.util.atomic import atomic_write_text

__all__ = ["PROMPT_TEMPLATE", "build_models", "build_tokenizer", "make_examples", "prepare"]

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m todi.tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="where data/ and models/ are written")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-dev", type=int, default=100)
    parser.add_argument("--num-valid", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = prepare(args.out_dir, n_train=args.num_train, n_dev=args.num_dev, n_valid=args.num_valid, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
