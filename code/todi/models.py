"""Loading models and tokenizers (student, teacher, evaluation checkpoints), LoRA, vocabulary checks."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "build_student",
    "build_teacher",
    "check_vocabularies",
    "load_model",
    "load_tokenizer",
    "optimizer_param_groups",
    "same_tokenizer",
    "save_random_model",
]


def _check_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (expected a Hugging Face model directory)")
    return path


def load_tokenizer(path: str | Path, padding_side: str = "right"):
    """AutoTokenizer with a pad token (the EOS token when the model has none, as the official code)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_check_dir(path, "tokenizer"), padding_side=padding_side)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no EOS token; responses could not be terminated")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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

    model = AutoModelForCausalLM.from_pretrained(
        _check_dir(path, "model"), dtype=dtype, attn_implementation="sdpa"
    )
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, _check_dir(adapter_path, "LoRA adapter"))
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device)


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
    load_tokenizer(reference_dir).save_pretrained(out_dir)
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
                            fan_in_fan_out=transposed)
        model = get_peft_model(model, config)
    elif peft is not None:
        raise ValueError(f"unsupported peft method {peft!r} (supported: lora)")
    return model


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


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def check_vocabularies(student, teacher, student_tokenizer, teacher_tokenizer) -> int:
    """Check that student and teacher share a vocabulary; return the compared size min(V_s, V_t).

    Output layers may differ in size when a model pads its vocabulary (Qwen-style): that is fine
    as long as both cover their tokenizer and every token has the same id for both tokenizers.
    Anything else would compare unrelated distributions, so it is an error.
    """
    v_s, v_t = _vocab_size(student), _vocab_size(teacher)
    for name, v, tok in (("student", v_s, student_tokenizer), ("teacher", v_t, teacher_tokenizer)):
        if len(tok) > v:
            raise ValueError(f"the {name}'s tokenizer has {len(tok)} tokens but its output layer only {v}")
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
    return min(v_s, v_t)


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
