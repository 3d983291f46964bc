"""A hidden-state cache stores the teacher's output layer: it must turn the captured hidden states into
the teacher's own logits. A soft-capping the config states is applied (Gemma style); a config that
states one the model does not apply (or any unstated post-processing) is refused, naming what it found."""

from __future__ import annotations

import pytest
import torch

from todi.cache.head import capture_head_inputs, check_output_layer, load_output_layer, output_layer, save_output_layer


def tiny(shared_dir, family: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(shared_dir / "model_hub" / family, **overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def head_and_logits(model, vocab: int):
    ids = torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture_head_inputs(model) as captured:
        logits = model(input_ids=ids).logits
    return captured[0].reshape(-1, captured[0].shape[-1]), logits.reshape(-1, logits.shape[-1])


def test_gpt2_head_reproduces_its_logits_and_round_trips(shared_dir, tmp_path):
    model = tiny(shared_dir, "gpt2/gpt2-base", n_layer=1, n_embd=32, n_head=2)
    layer = output_layer(model)
    hidden, logits = head_and_logits(model, 50257)
    assert layer.softcap is None and check_output_layer(model, layer, hidden, logits) < 1e-5
    save_output_layer(tmp_path, layer, torch.float32)
    back = load_output_layer(tmp_path, None, "cpu")
    assert torch.equal(back.weight, layer.weight) and back.bias is None


def test_a_stated_softcap_is_applied(shared_dir):
    model = tiny(shared_dir, "gemma3/gemma-3-270m-it", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5)
    layer = output_layer(model)
    hidden, logits = head_and_logits(model, 1000)
    assert layer.softcap == 0.5 and logits.abs().max() <= 0.5
    assert check_output_layer(model, layer, hidden, logits) < 1e-5


def test_a_post_processing_the_model_does_not_match_is_refused(shared_dir):
    model = tiny(shared_dir, "gpt2/gpt2-base", n_layer=1, n_embd=32, n_head=2)
    model.config.final_logit_softcapping = 0.5  # stated, but GPT-2's forward does not apply it
    hidden, logits = head_and_logits(model, 50257)
    with pytest.raises(ValueError, match=r"not its output layer .* final_logit_softcapping=0.5.*--mode topk"):
        check_output_layer(model, output_layer(model), hidden, logits)
    plain = output_layer(tiny(shared_dir, "gpt2/gpt2-base", n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="states no post-processing"):  # an unstated one: logits scaled
        check_output_layer(tiny(shared_dir, "gpt2/gpt2-base", n_layer=1, n_embd=32, n_head=2), plain, hidden,
                           head_and_logits(model, 50257)[1] * 3)
