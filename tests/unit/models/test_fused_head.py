"""The fused lm_head path against model(...).logits + criterion: losses, statistics, gradients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from todi.loss.criterion import DistillationLoss, KDPlan
from todi.models.fused_head import fused_student_loss
from todi.models import load_model

REPO = Path(__file__).resolve().parents[3]


def batch(vocab, teacher_vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0  # right padding
    labels = torch.randint(0, vocab, (2, 12), generator=g)
    labels[:, :4] = -100  # prompt
    labels[1, 9:] = -100
    teacher = torch.randn(2, 12, teacher_vocab, generator=g) * 2
    return ids, attention, labels, teacher


def grads_of(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compare(model, criterion, ids, attention, labels, teacher):
    model.zero_grad()
    ref = criterion(model(input_ids=ids, attention_mask=attention).logits, labels, teacher, diagnostics=True)
    ref_grads = grads_of(model, ref.loss)
    out = fused_student_loss(model, ids, attention, labels, teacher, criterion, diagnostics=True, chunk_size=5)
    grads = grads_of(model, out.loss)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
    assert out.num_tokens == ref.num_tokens and set(out.stats.entries()) == set(ref.stats.entries())
    for key, value in ref.stats.entries().items():
        torch.testing.assert_close(out.stats.entries()[key], value, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(ref_grads) and len(grads) > 0
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(grads[name] / scale, ref_grads[name] / scale, rtol=1e-4, atol=1e-5, msg=name)
    assert model.get_output_embeddings().forward.__func__ is type(model.get_output_embeddings()).forward


@pytest.mark.parametrize("objective,padded", [("ToDi", False), ("adaptive_kl", True), (None, False)])
def test_fused_matches_unfused_gpt2(tiny_gpt2, objective, padded):
    model = load_model(tiny_gpt2)
    vocab = model.config.vocab_size
    crit = DistillationLoss(objective, kd_rate=0.5 if objective else 0.0, temperature=2.0, impl="chunked")
    compare(model, crit, *batch(vocab, vocab + 3 if padded else vocab))


@pytest.mark.parametrize("objective", ["ToDi", "skewed_reverse_kl"])
def test_fused_matches_unfused_llama(tiny_llama, objective):
    model = load_model(tiny_llama)
    vocab = model.config.vocab_size
    compare(model, DistillationLoss(objective, kd_rate=0.7, impl="chunked"), *batch(vocab, vocab, seed=1))


def test_fused_matches_unfused_under_peft_lora(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    vocab = model.get_base_model().config.vocab_size
    compare(model, DistillationLoss("ToDi", kd_rate=0.5, impl="chunked"), *batch(vocab, vocab, seed=2))


def test_fused_refuses_what_it_cannot_do(tiny_gpt2):
    model = load_model(tiny_gpt2)
    ids, attention, labels, teacher = batch(model.config.vocab_size, model.config.vocab_size)

    class Planner:
        def plan(self, student_logits, teacher_logits, mask, temperature, *, labels):
            return KDPlan(mask=mask, temperature=temperature)

    with pytest.raises(ValueError, match="planner"):
        fused_student_loss(model, ids, attention, labels, teacher, DistillationLoss("ToDi", planner=Planner()))
    with pytest.raises(ValueError, match="impl"):
        fused_student_loss(model, ids, attention, labels, teacher, DistillationLoss("ToDi", impl="reference"))
    with pytest.raises(TypeError, match="Hugging Face"):
        fused_student_loss(torch.nn.Linear(3, 3), ids, attention, labels, teacher, DistillationLoss("ToDi"))
    # the output layer's forward is restored after an error inside the model
    with pytest.raises(ValueError, match="labels"):
        fused_student_loss(model, ids, attention, labels.clamp_max(10**6) + 10**6, teacher, DistillationLoss("ToDi"))
    assert "forward" not in vars(model.get_output_embeddings())


_ZERO3 = r"""
import json, sys
import torch, deepspeed
from deepspeed.utils import safe_get_full_grad
from todi.loss.criterion import DistillationLoss
from todi.models.fused_head import fused_student_loss
from todi.models import load_model

path = sys.argv[1]
deepspeed.init_distributed(dist_backend="gloo")
config = {
    "train_micro_batch_size_per_gpu": 2,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
}
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 1000, (2, 10), generator=g)
labels = torch.randint(0, 1000, (2, 10), generator=g)
labels[:, :3] = -100
crit = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0, impl="chunked")
result = {}
for mode in ("unfused", "fused"):
    model = load_model(path)
    teacher = torch.randn(2, 10, model.config.vocab_size, generator=torch.Generator().manual_seed(1))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config)
    head = engine.module.get_output_embeddings()
    if mode == "unfused":
        out = crit(engine(input_ids=ids, use_cache=False).logits, labels, teacher)
    else:
        out = fused_student_loss(engine, ids, None, labels, teacher, crit)
    released = head.weight.numel() == 0  # ZeRO-3 partitioned the weight again after the forward
    engine.backward(out.loss)
    grads = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}
    result[mode] = {
        "loss": out.loss.item(),
        "released": released,
        "grads": {n: g.flatten().tolist() for n, g in grads.items() if g is not None},
    }
print("RESULT " + json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_fused_under_deepspeed_zero3_gives_the_unfused_gradients(tiny_gpt2, tmp_path):
    """A real ZeRO-3 engine (CPU, gloo, one rank): the lm_head weight is partitioned, gathered for
    the fused forward, and its gradient (from the fused backward) reaches DeepSpeed's partitions."""
    script = tmp_path / "zero3.py"
    script.write_text(_ZERO3)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "code") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_gpt2)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    unfused, fused = result["unfused"], result["fused"]
    assert unfused["released"] and fused["released"]
    assert fused["loss"] == pytest.approx(unfused["loss"], rel=1e-6)
    assert set(fused["grads"]) == set(unfused["grads"]) and "transformer.wte.weight" in fused["grads"]
    for name, ref in unfused["grads"].items():
        ref_t, got = torch.tensor(ref), torch.tensor(fused["grads"][name])
        assert ref_t.abs().max() > 0, name
        torch.testing.assert_close(got, ref_t, rtol=1e-5, atol=1e-6 * ref_t.abs().max().item(), msg=name)


def test_fused_refuses_a_model_that_transforms_its_logits(tiny_gpt2):
    """A model that post-processes the output layer's result (e.g. logit soft-capping) cannot be fused."""
    model = load_model(tiny_gpt2)
    ids, attention, labels, teacher = batch(model.config.vocab_size, model.config.vocab_size)
    original = model.forward

    def capped(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = 30.0 * torch.tanh(out.logits / 30.0)
        return out

    model.forward = capped
    with pytest.raises(RuntimeError, match="did not return its output layer's result unchanged"):
        fused_student_loss(model, ids, attention, labels, teacher, DistillationLoss("ToDi"))
