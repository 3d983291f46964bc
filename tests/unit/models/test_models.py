"""Student/teacher construction: LoRA, merged teacher adapters, vocabulary checks, AdamW groups."""

from __future__ import annotations

import pytest
import torch

from todi.models import (
    build_student,
    build_teacher,
    check_vocabularies,
    load_model,
    load_tokenizer,
    optimizer_param_groups,
    same_tokenizer,
    save_random_model,
)


def test_optimizer_groups_match_the_official_no_decay_list(tiny_gpt2):
    model = load_model(tiny_gpt2)
    groups = optimizer_param_groups(model, 0.01)
    official_no_decay = ["bias", "ln_f.weight", "ln_1.weight", "ln_2.weight", "ln_cross_attn"]
    expected = {n for n, _ in model.named_parameters() if any(nd in n for nd in official_no_decay)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[1]["params"]} == expected
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))


def test_lora_student_trains_only_the_adapter(tiny_gpt2):
    model = build_student(tiny_gpt2, dtype=torch.float32, peft="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          gradient_checkpointing=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = model.base_model.model
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    groups = optimizer_param_groups(model, 0.01)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(trainable)
    # gradients reach the adapter through checkpointed blocks with frozen inputs
    model.train()
    ids = torch.randint(0, 1000, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_teacher_adapter_is_merged_and_frozen(tiny_gpt2_teacher, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_gpt2_teacher)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", fan_in_fan_out=True))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a non-trivial adapter
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 1000, (2, 10))
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        plain = load_model(tiny_gpt2_teacher)(input_ids=ids).logits

    teacher = build_teacher(tiny_gpt2_teacher, dtype=torch.float32, adapter_path=tmp_path / "adapter")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert "Peft" not in type(teacher).__name__
    with torch.no_grad():
        got = teacher(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-2)


def test_padded_vocabulary_is_accepted(shared_dir, tmp_path):
    gpt2 = shared_dir / "model_hub/gpt2/gpt2-base"
    small = dict(n_layer=1, n_embd=32, n_head=2)
    student = load_model(save_random_model(gpt2, tmp_path / "s", **small))
    teacher = load_model(save_random_model(gpt2, tmp_path / "t", vocab_size=50304, **small))  # padded to 128×
    tok = load_tokenizer(gpt2)
    assert check_vocabularies(student, teacher, tok, load_tokenizer(tmp_path / "t")) == 50257


def test_vocabulary_mismatches_are_errors(shared_dir, tmp_path, tiny_gpt2, tiny_llama):
    gpt2_tok, llama_tok = load_tokenizer(tiny_gpt2), load_tokenizer(tiny_llama)
    student, llama = load_model(tiny_gpt2), load_model(tiny_llama)
    with pytest.raises(ValueError, match="vocabularies differ"):
        check_vocabularies(student, llama, gpt2_tok, llama_tok)
    truncated = load_model(save_random_model(shared_dir / "model_hub/gpt2/gpt2-base", tmp_path / "v",
                                             vocab_size=50000, n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="50257 tokens but its output layer only 50000"):
        check_vocabularies(student, truncated, gpt2_tok, gpt2_tok)


def test_same_tokenizer(shared_dir, tiny_gpt2, tiny_llama):
    a, b = load_tokenizer(tiny_gpt2), load_tokenizer(shared_dir / "model_hub/gpt2/gpt2-base")
    assert same_tokenizer(a, b)
    assert not same_tokenizer(a, load_tokenizer(tiny_llama))
    b.add_special_tokens({"additional_special_tokens": ["<|x|>"]})
    assert not same_tokenizer(a, b)
