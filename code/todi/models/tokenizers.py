"""Tokenizers and their per-family profiles.

Per-family tokenizer handling (:class:`TokenizerProfile`, decided by :func:`tokenizer_profile`):
the official ToDi code sets pad = EOS for GPT-2, Llama, OLMo and Gemma, and for Qwen forces the EOS
to ``<|endoftext|>`` (151643, what the *base* models end a document with; the shipped
tokenizer_config is the Instruct one, whose EOS is ``<|im_end|>``). Here the same, plus:

* the EOS appended to every training response is the profile's ``eos``; generation stops at any
  of ``stop_token_ids`` (the EOS and the end-of-turn token of the family's chat models, so an
  answer ends at either);
* Gemma's EOS is ``<eos>`` (id 1, what the -pt models end with; the -it tokenizer_config says
  ``<end_of_turn>``) and ``<bos>`` is prepended to prompts (``add_bos``): Gemma's model card and
  the transformers docs require a BOS token, and the models degrade without one. The other
  families get no BOS, as in the official code (GPT-2, Qwen and OLMo 2 define none in their configs;
  Llama's is left out as the official code does);
* a checkpoint records the profile it was trained with in ``todi_tokenizer.json``
  (:func:`save_tokenizer_profile`), which :func:`load_tokenizer` applies instead of guessing again,
  so evaluation appends, pads and stops with the same tokens as training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ['PROFILE_FILE', 'TokenizerProfile', 'check_model_dir', 'load_tokenizer', 'model_family', 'model_type_at', 'profile_of', 'prompt_prefix_ids', 'same_tokenizer', 'save_tokenizer_profile', 'stop_token_ids', 'tokenizer_profile']

PROFILE_FILE = "todi_tokenizer.json"


# config.json model_type -> family (the official code's --model-type groups)
_FAMILIES = {
    "gpt2": "gpt2",
    "llama": "llama", "mistral": "llama",
    "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen",
    "olmo": "olmo", "olmo2": "olmo", "olmo3": "olmo",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
}


@dataclass(frozen=True)
class TokenizerProfile:
    """How a family's tokenizer is used: recorded in every checkpoint (``todi_tokenizer.json``).

    family: "gpt2", "llama", "qwen", "olmo", "gemma" or "default" (a model of another family:
        its own EOS, pad = its pad token or the EOS).
    eos: the token appended to every training response (and the first stop token).
    pad: the padding token (masked out everywhere; the EOS, as the official code, for the known families).
    stop: tokens at which generation stops (strings; the ids come from the tokenizer).
    bos: the token prepended to every prompt when ``add_bos`` (Gemma), else None.
    """

    family: str
    eos: str
    pad: str
    stop: tuple[str, ...]
    bos: str | None = None
    add_bos: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self, tokenizer=None) -> str:
        record = {**asdict(self), "stop": list(self.stop)}
        if tokenizer is not None:  # the ids too, for readers without a tokenizer
            ids = lambda t: tokenizer.convert_tokens_to_ids(t) if t is not None else None  # noqa: E731
            record.update(eos_token_id=ids(self.eos), pad_token_id=ids(self.pad),
                          stop_token_ids=[ids(t) for t in self.stop], bos_token_id=ids(self.bos))
        return json.dumps(record, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TokenizerProfile":
        raw = json.loads(text)
        return cls(family=raw["family"], eos=raw["eos"], pad=raw["pad"], stop=tuple(raw["stop"]),
                   bos=raw.get("bos"), add_bos=bool(raw.get("add_bos", False)), extra=raw.get("extra", {}))


def check_model_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (expected a Hugging Face model directory)")
    return path


def model_type_at(path: Path) -> str | None:
    """config.json's model_type at ``path`` (or at a LoRA adapter's base model), else None."""
    for name in ("config.json", "adapter_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if name == "config.json":
            return raw.get("model_type")
        base = raw.get("base_model_name_or_path")
        if base and Path(base).is_dir() and Path(base).resolve() != path.resolve():
            return model_type_at(Path(base))
    return None


def model_family(path: str | Path, tokenizer=None) -> str:
    """The family of the model at ``path`` from its config.json (or a LoRA adapter's base model),
    else from tracts of its tokenizer's vocabulary; "default" when neither tells."""
    model_type = model_type_at(Path(path))
    if model_type in _FAMILIES:
        return _FAMILIES[model_type]
    if model_type is None and tokenizer is not None:
        vocab = tokenizer.get_vocab()
        if "<|im_end|>" in vocab and "<|endoftext|>" in vocab:
            return "qwen"
        if "<start_of_turn>" in vocab and "<eos>" in vocab:
            return "gemma"
        if "<|endofprompt|>" in vocab and "<|pad|>" in vocab:
            return "olmo"
    return "default"


def tokenizer_profile(tokenizer, family: str) -> TokenizerProfile:
    """The profile of ``family`` for ``tokenizer`` (see the module docstring)."""
    vocab = tokenizer.get_vocab()

    def need(token: str) -> str:
        if token not in vocab:
            raise ValueError(f"the {family} tokenizer has no {token!r} token")
        return token

    def present(*tokens: str) -> tuple[str, ...]:
        return tuple(t for t in tokens if t in vocab)

    if tokenizer.eos_token is None and family in ("default", "gpt2", "llama", "olmo"):
        raise ValueError("the tokenizer has no EOS token; responses could not be terminated")
    if family == "qwen":  # the base models end with <|endoftext|> (official: eos_token_id = 151643)
        eos = need("<|endoftext|>")
        return TokenizerProfile(family, eos=eos, pad=eos, stop=(eos,) + present("<|im_end|>"))
    if family == "gemma":  # -pt models end with <eos>; -it ones with <end_of_turn>; BOS required
        eos = need("<eos>")
        return TokenizerProfile(family, eos=eos, pad=eos, stop=(eos,) + present("<end_of_turn>"),
                                bos=need("<bos>"), add_bos=True)
    eos = tokenizer.eos_token
    if family in ("gpt2", "llama", "olmo"):  # official: pad = EOS
        return TokenizerProfile(family, eos=eos, pad=eos, stop=(eos,))
    # another family: today's behaviour (its own pad token, else the EOS)
    return TokenizerProfile("default", eos=eos, pad=tokenizer.pad_token or eos, stop=(eos,))


def _apply_profile(tokenizer, profile: TokenizerProfile):
    vocab = tokenizer.get_vocab()
    for token in (profile.eos, profile.pad, *profile.stop, *([profile.bos] if profile.bos else [])):
        if token not in vocab:
            raise ValueError(f"token {token!r} of the {profile.family} tokenizer profile is not in the tokenizer")
    if tokenizer.eos_token != profile.eos:
        tokenizer.eos_token = profile.eos
    if tokenizer.pad_token != profile.pad:
        tokenizer.pad_token = profile.pad
    if profile.bos is not None and tokenizer.bos_token != profile.bos:
        tokenizer.bos_token = profile.bos
    tokenizer.todi_profile = profile
    return tokenizer


def load_tokenizer(path: str | Path, padding_side: str = "right", *, family: str | None = None):
    """AutoTokenizer with its family's EOS, pad, stop tokens and BOS rule (:class:`TokenizerProfile`).

    The profile a checkpoint recorded (``todi_tokenizer.json``) wins; otherwise ``family`` or the
    one config.json names (:func:`model_family`). The profile is ``tokenizer.todi_profile``.
    """
    from transformers import AutoTokenizer

    path = check_model_dir(path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    recorded = path / PROFILE_FILE
    if recorded.is_file() and family is None:
        profile = TokenizerProfile.from_json(recorded.read_text(encoding="utf-8"))
    else:
        profile = tokenizer_profile(tokenizer, family or model_family(path, tokenizer))
    return _apply_profile(tokenizer, profile)


def profile_of(tokenizer) -> TokenizerProfile:
    profile = getattr(tokenizer, "todi_profile", None)
    if profile is None:  # a tokenizer not loaded through load_tokenizer
        eos = tokenizer.eos_token
        profile = TokenizerProfile("default", eos=eos, pad=tokenizer.pad_token or eos, stop=(eos,))
    return profile


def stop_token_ids(tokenizer) -> list[int]:
    """The ids generation stops at: the EOS first, then the family's other end tokens."""
    ids = tokenizer.convert_tokens_to_ids(list(profile_of(tokenizer).stop))
    return list(dict.fromkeys(i for i in ids if i is not None))


def prompt_prefix_ids(tokenizer) -> list[int]:
    """Ids to put before every prompt, in training and in generation: ``[<bos>]`` for Gemma, else []."""
    profile = profile_of(tokenizer)
    return [tokenizer.convert_tokens_to_ids(profile.bos)] if profile.add_bos and profile.bos else []


def save_tokenizer_profile(tokenizer, out_dir: str | Path) -> Path:
    """Write ``todi_tokenizer.json`` (family, EOS, pad, stop tokens, BOS rule) into ``out_dir``."""
    out = Path(out_dir) / PROFILE_FILE
    out.write_text(profile_of(tokenizer).to_json(tokenizer), encoding="utf-8")
    return out


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers turn every text into the same ids (then one tokenisation serves both)."""
    if a is b:
        return True
    if type(a) is not type(b) or a.eos_token_id != b.eos_token_id or a.pad_token_id != b.pad_token_id:
        return False
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is not None and backend_b is not None:
        return backend_a.to_str() == backend_b.to_str()
    return a.get_vocab() == b.get_vocab()
