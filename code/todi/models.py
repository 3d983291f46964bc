"""Loading models and tokenizers (student, teacher, evaluation checkpoints), LoRA, vocabulary checks.

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

Vocabulary rule for KD (:func:`shared_vocab_size`): the distributions are compared over the ids
both output layers and both tokenizers define, ``min(rows_s, rows_t, len(tok_s), len(tok_t))``;
rows beyond a tokenizer (padding rows) are left out; added special tokens beyond an output layer
(Gemma 3's ``<image_soft_token>``, id 262144 with 262,144 rows) are left out with one log line;
different tokenizers are an error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from todi.log import logger

__all__ = [
    "PROFILE_FILE",
    "TokenizerProfile",
    "build_student",
    "build_teacher",
    "check_vocabularies",
    "load_model",
    "load_tokenizer",
    "model_family",
    "optimizer_param_groups",
    "output_rows",
    "prompt_prefix_ids",
    "same_tokenizer",
    "save_random_model",
    "save_tokenizer_profile",
    "shared_vocab_size",
    "stop_token_ids",
    "tokenizer_profile",
]

PROFILE_FILE = "todi_tokenizer.json"

# config.json model_type -> family (the official code's --model-type groups)
_FAMILIES = {
    "gpt2": "gpt2",
    "llama": "llama", "mistral": "llama",
    "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen",
    "olmo": "olmo", "olmo2": "olmo", "olmo3": "olmo",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
}
# multimodal checkpoints loaded as their text-only causal LM: checkpoint key prefixes -> the causal LM's
_TEXT_ONLY = {
    "gemma3": {r"^language_model\.model\.": "model.", r"^model\.language_model\.": "model.",
               r"^language_model\.lm_head\.": "lm_head."},
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


def _check_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (expected a Hugging Face model directory)")
    return path


def _model_type_at(path: Path) -> str | None:
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
            return _model_type_at(Path(base))
    return None


def model_family(path: str | Path, tokenizer=None) -> str:
    """The family of the model at ``path`` from its config.json (or a LoRA adapter's base model),
    else from tracts of its tokenizer's vocabulary; "default" when neither tells."""
    model_type = _model_type_at(Path(path))
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

    path = _check_dir(path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    recorded = path / PROFILE_FILE
    if recorded.is_file() and family is None:
        profile = TokenizerProfile.from_json(recorded.read_text(encoding="utf-8"))
    else:
        profile = tokenizer_profile(tokenizer, family or model_family(path, tokenizer))
    return _apply_profile(tokenizer, profile)


def _profile_of(tokenizer) -> TokenizerProfile:
    profile = getattr(tokenizer, "todi_profile", None)
    if profile is None:  # a tokenizer not loaded through load_tokenizer
        eos = tokenizer.eos_token
        profile = TokenizerProfile("default", eos=eos, pad=tokenizer.pad_token or eos, stop=(eos,))
    return profile


def stop_token_ids(tokenizer) -> list[int]:
    """The ids generation stops at: the EOS first, then the family's other end tokens."""
    ids = tokenizer.convert_tokens_to_ids(list(_profile_of(tokenizer).stop))
    return list(dict.fromkeys(i for i in ids if i is not None))


def prompt_prefix_ids(tokenizer) -> list[int]:
    """Ids to put before every prompt, in training and in generation: ``[<bos>]`` for Gemma, else []."""
    profile = _profile_of(tokenizer)
    return [tokenizer.convert_tokens_to_ids(profile.bos)] if profile.add_bos and profile.bos else []


def save_tokenizer_profile(tokenizer, out_dir: str | Path) -> Path:
    """Write ``todi_tokenizer.json`` (family, EOS, pad, stop tokens, BOS rule) into ``out_dir``."""
    out = Path(out_dir) / PROFILE_FILE
    out.write_text(_profile_of(tokenizer).to_json(tokenizer), encoding="utf-8")
    return out


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    adapter_path: str | Path | None = None,
    merge_adapter: bool = False,
    device: str | torch.device = "cpu",
):
    """AutoModelForCausalLM in ``dtype`` (SDPA attention), optionally with a LoRA adapter.

    With ``merge_adapter`` the adapter is merged into the weights (a plain model comes back);
    otherwise the :class:`peft.PeftModel` is returned.
    """
    from transformers import AutoModelForCausalLM

    path = _check_dir(path, "model")
    text_only = _text_only_loading(path)
    if text_only is not None:
        model = _load_text_only(path, *text_only, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, _check_dir(adapter_path, "LoRA adapter"))
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device)


def _text_only_loading(path: Path):
    """(text config, key mapping) when ``path`` holds a multimodal checkpoint to load as its text model."""
    model_type = _model_type_at(path)
    if model_type not in _TEXT_ONLY:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    text = getattr(config, "text_config", None)
    return (text, _TEXT_ONLY[model_type]) if text is not None else None


def _load_text_only(path: Path, text_config, key_mapping: dict, *, dtype):
    """The text-only causal LM of a multimodal checkpoint (e.g. Gemma 3 4B+ as Gemma3ForCausalLM):
    the language model's weights, the vision tower left out; any missing weight is an error."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the vision tower's weights are "unexpected": by design
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, config=text_config, key_mapping=key_mapping, dtype=dtype, attn_implementation="sdpa",
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    tied = {"lm_head.weight"} if getattr(text_config, "tie_word_embeddings", True) else set()
    missing = sorted(set(info.get("missing_keys", [])) - tied)
    if missing:
        raise ValueError(f"{path}: loading the text model of this multimodal checkpoint left weights missing "
                         f"({len(missing)}, e.g. {missing[:3]})")
    logger.info(f"{path}: multimodal checkpoint loaded as its text-only {type(model).__name__} "
                f"(vision weights left out)")
    return model


def save_random_model(
    reference_dir: str | Path, out_dir: str | Path, *, seed: int = 0, **config_overrides
) -> Path:
    """Save a randomly initialised model built from ``reference_dir``'s config, with its tokenizer.

    For tests, benchmarks and the demo: e.g. ``save_random_model(gpt2_dir, out, n_layer=2,
    n_embd=64, n_head=4)`` gives a tiny GPT-2 with the real GPT-2 tokenizer. Returns ``out_dir``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    reference_dir = _check_dir(reference_dir, "reference model directory")
    config = AutoConfig.from_pretrained(reference_dir, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer = load_tokenizer(reference_dir)
    tokenizer.save_pretrained(out_dir)
    save_tokenizer_profile(tokenizer, out_dir)
    return out_dir


def build_student(
    path: str | Path,
    *,
    dtype: torch.dtype,
    peft: str | None = None,
    lora_r: int = 16,
    lora_alpha: int = 64,
    lora_dropout: float = 0.1,
    gradient_checkpointing: bool = False,
):
    """The model to train: all weights, or a fresh LoRA adapter (peft) on frozen weights."""
    model = load_model(path, dtype=dtype)
    if gradient_checkpointing:
        # non-reentrant checkpointing works with frozen inputs (LoRA) and with ZeRO-3
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if peft == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        if gradient_checkpointing:
            model.enable_input_require_grads()
        from transformers.pytorch_utils import Conv1D

        # GPT-2 stores its projections transposed (Conv1D): tell peft instead of letting it guess
        transposed = any(isinstance(m, Conv1D) for m in model.modules())
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            fan_in_fan_out=transposed, target_modules=_lora_targets(model))
        model = get_peft_model(model, config)
    elif peft is not None:
        raise ValueError(f"unsupported peft method {peft!r} (supported: lora)")
    return model


# The attention projections LoRA adapts when peft has no default for a model type (OLMo 2, for one)
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _lora_targets(model) -> list[str] | None:
    """None (peft's per-architecture default) where peft knows the model type, else the attention
    projections the model has (the same choice peft makes for Llama-style models)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    if model.config.model_type in defaults:
        return None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    found = [n for n in ATTENTION_PROJECTIONS if n in names]
    if not found:
        raise ValueError(f"--peft lora: peft has no default target modules for {model.config.model_type!r} and the "
                         f"model has none of {', '.join(ATTENTION_PROJECTIONS)}")
    return found


def build_teacher(path: str | Path, *, dtype: torch.dtype, adapter_path: str | Path | None = None):
    """The frozen teacher in eval mode, with its LoRA adapter merged when one is given."""
    model = load_model(path, dtype=dtype, adapter_path=adapter_path, merge_adapter=True)
    model.eval()
    model.requires_grad_(False)
    return model


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


def output_rows(model) -> int:
    """The number of rows of the model's output layer (its logits' last dimension)."""
    return model.get_output_embeddings().weight.shape[0]


def _beyond_output_layer(tokenizer, rows: int, name: str) -> list[int]:
    """Tokenizer ids ≥ ``rows``: allowed (and returned) when all are added tokens that are none of
    the EOS/pad/BOS/stop tokens (no text the data holds maps there); otherwise an error."""
    n = len(tokenizer)
    if n <= rows:
        return []
    beyond = list(range(rows, n))
    added = getattr(tokenizer, "added_tokens_decoder", {})
    profile = _profile_of(tokenizer)
    needed = set(stop_token_ids(tokenizer)) | set(prompt_prefix_ids(tokenizer))
    needed |= {tokenizer.convert_tokens_to_ids(profile.pad), tokenizer.eos_token_id}
    if any(i not in added or i in needed for i in beyond):
        raise ValueError(f"the {name}'s tokenizer has {n} tokens but its output layer only {rows}: "
                         "the ids beyond it include ordinary or end-of-text tokens the model could never predict")
    return beyond


def check_vocabularies(student, teacher, student_tokenizer, teacher_tokenizer) -> int:
    """Check that student and teacher share a vocabulary; return the compared size.

    The size is ``min(student rows, teacher rows, len(student tokenizer), len(teacher tokenizer))``:
    output rows beyond a tokenizer (padding, Qwen-style 152,064 / 151,936 rows for 151,665 tokens)
    are left out, and so are added special tokens beyond an output layer (Gemma 3's
    ``<image_soft_token>``, id 262144 of 262,145, with 262,144 rows), with one log line. Tokenizers
    that give some token different ids are an error (cross-tokenizer KD is not supported).
    """
    v_s, v_t = output_rows(student), output_rows(teacher)
    left_out = {}
    for name, v, tok in (("student", v_s, student_tokenizer), ("teacher", v_t, teacher_tokenizer)):
        left_out.update({i: name for i in _beyond_output_layer(tok, v, name)})
    if not same_tokenizer(student_tokenizer, teacher_tokenizer):
        vocab_s, vocab_t = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        differing = [tok for tok, i in vocab_s.items() if vocab_t.get(tok, i) != i]
        missing = len(vocab_s.keys() ^ vocab_t.keys())
        if differing or missing:
            example = f"e.g. {differing[0]!r}: {vocab_s[differing[0]]} vs {vocab_t[differing[0]]}" if differing else ""
            raise ValueError(
                f"student and teacher vocabularies differ ({len(differing)} tokens with other ids {example}; "
                f"{missing} tokens in only one); KD here compares distributions over the same vocabulary "
                "(cross-tokenizer KD is not supported)"
            )
    vocab = min(v_s, v_t, len(student_tokenizer), len(teacher_tokenizer))
    if left_out:
        ids = sorted(left_out)
        tokens = student_tokenizer.convert_ids_to_tokens(ids[:3])
        logger.info(f"KD leaves out {len(ids)} tokenizer id(s) beyond an output layer "
                    f"({', '.join(f'{t!r} ({i})' for t, i in zip(tokens, ids))}{', ...' if len(ids) > 3 else ''}; "
                    f"rows: student {v_s}, teacher {v_t})")
    return vocab


def shared_vocab_size(student, teacher, student_tokenizer, teacher_tokenizer) -> int:
    """:func:`check_vocabularies`, logged: the number of leading vocabulary entries KD compares
    (pass it to :class:`todi.criterion.DistillationLoss` as ``vocab_size``)."""
    vocab = check_vocabularies(student, teacher, student_tokenizer, teacher_tokenizer)
    v_s, v_t = output_rows(student), output_rows(teacher)
    logger.info(f"KD compares the first {vocab} vocabulary entries (output rows: student {v_s}, teacher {v_t}; "
                f"tokenizer {len(student_tokenizer)}){'; padding rows left out' if max(v_s, v_t) > vocab else ''}")
    return vocab


def optimizer_param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights (1-D tensors).

    For GPT-2 this is exactly the official grouping (biases and ln weights undecayed); with LoRA
    every trainable tensor is a matrix, so all are decayed, as in the official code.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
