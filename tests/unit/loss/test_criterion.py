"""The KD criterion: CE/KD mixing, masking, and global-token normalisation across splits."""

from __future__ import annotations

import pytest
import torch

from todi.loss.criterion import DistillationLoss, KDPlan, loss_scale
from todi.loss.divergence import DIVERGENCES, divergence

V = 37


class TinyLM(torch.nn.Module):
    """Embedding → linear: enough parameters for gradients to mix positions' contributions."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(V, 16, generator=g) * 0.5)
        self.out = torch.nn.Parameter(torch.randn(16, V, generator=g) * 0.5)

    def forward(self, ids):
        return self.emb[ids] @ self.out


def batch(n=6, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, length), generator=g)
    labels = torch.randint(0, V, (n, length), generator=g)
    # prompts of different lengths, right padding, one example without any response token
    for i in range(n):
        start = 1 + i % 4
        end = length - (i % 3)
        labels[i, :start] = -100
        labels[i, end:] = -100
    labels[2] = -100
    teacher = torch.randn(n, length, V, generator=g) * 2
    return ids, labels, teacher


def test_sft_is_summed_cross_entropy():
    model = TinyLM()
    ids, labels, _ = batch()
    out = DistillationLoss(None, kd_rate=0.0)(model(ids), labels)
    logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, V), labels.view(-1), reduction="sum")
    torch.testing.assert_close(out.loss, expected)
    assert out.num_tokens == (labels != -100).sum()
    assert set(out.stats.entries()) == {"ce", "correct"}


@pytest.mark.parametrize("objective", list(DIVERGENCES))
def test_kd_loss_is_mix_of_ce_and_divergence_over_response_tokens(objective):
    model = TinyLM()
    ids, labels, teacher = batch()
    crit = DistillationLoss(objective, kd_rate=0.3, temperature=2.0)
    logits = model(ids)
    out = crit(logits, labels, teacher)
    mask = labels != -100
    ce = torch.nn.functional.cross_entropy(logits[mask].double(), labels[mask], reduction="sum")
    kd = divergence(objective, logits, teacher, temperature=2.0, impl="reference")[mask].double().sum()
    torch.testing.assert_close(out.loss.double(), 0.7 * ce + 0.3 * kd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.stats.kd.double(), kd, rtol=1e-5, atol=1e-5)
    assert out.stats.kd_tokens == mask.sum()
    hits = (logits.argmax(-1) == labels) & mask
    assert out.stats.correct == hits.sum()


@pytest.mark.parametrize("objective", [None, "ToDi", "adaptive_kl"])
def test_batch_without_response_tokens_gives_finite_zero(objective):
    model = TinyLM()
    ids, labels, teacher = batch()
    labels[:] = -100
    crit = DistillationLoss(objective, kd_rate=0.5 if objective else 0.0)
    out = crit(model(ids), labels, teacher)
    assert out.loss.item() == 0.0 and out.num_tokens.item() == 0
    out.loss.backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all() and (p.grad == 0).all()
    scaled = out.loss * loss_scale(out.num_tokens, 2, 4)
    assert torch.isfinite(scaled) and scaled.item() == 0.0


def grads_whole(model, crit, ids, labels, teacher):
    model.zero_grad()
    out = crit(model(ids), labels, teacher)
    (out.loss / out.num_tokens).backward()
    return [p.grad.clone() for p in model.parameters()]


def grads_split(model, crit, ids, labels, teacher, ranks, accum):
    """Simulate `ranks` data-parallel ranks × `accum` micro-batches as DeepSpeed runs them."""
    n = ids.shape[0]
    chunks = [slice(i * n // (ranks * accum), (i + 1) * n // (ranks * accum)) for i in range(ranks * accum)]
    global_tokens = (labels != -100).sum()  # what the trainer all-reduces before the step
    rank_grads = []
    for r in range(ranks):
        model.zero_grad()
        for k in range(accum):
            part = chunks[r * accum + k]
            out = crit(model(ids[part]), labels[part], teacher[part])
            loss = out.loss * loss_scale(global_tokens, accum, ranks)
            (loss / accum).backward()  # DeepSpeed's engine.backward divides by the accumulation steps
        rank_grads.append([p.grad.clone() for p in model.parameters()])
    return [sum(g) / ranks for g in zip(*rank_grads)]  # data parallelism averages over ranks


@pytest.mark.parametrize("objective", ["ToDi", "forward_kl", "adaptive_kl", None])
@pytest.mark.parametrize("ranks,accum", [(1, 3), (2, 1), (2, 3)])
def test_split_batches_give_the_whole_batch_gradient(objective, ranks, accum):
    ids, labels, teacher = batch(n=6, seed=3)
    crit = DistillationLoss(objective, kd_rate=0.5 if objective else 0.0, temperature=2.0)
    model = TinyLM(seed=4)
    whole = grads_whole(model, crit, ids, labels, teacher)
    split = grads_split(model, crit, ids, labels, teacher, ranks, accum)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_split_differs_from_per_micro_batch_mean():
    """Guard: averaging per-micro-batch means (the usual mistake) would not match."""
    ids, labels, teacher = batch(n=6, seed=3)
    crit = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0)
    model = TinyLM(seed=4)
    whole = grads_whole(model, crit, ids, labels, teacher)
    model.zero_grad()
    for part in (slice(0, 3), slice(3, 6)):
        out = crit(model(ids[part]), labels[part], teacher[part])
        (out.loss / out.num_tokens.clamp_min(1) / 2).backward()
    naive = [p.grad for p in model.parameters()]
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(whole, naive))


def test_padded_teacher_vocabulary_uses_shared_prefix():
    model = TinyLM()
    ids, labels, teacher = batch()
    padded = torch.cat([teacher, torch.randn(*teacher.shape[:2], 11)], dim=-1)
    crit = DistillationLoss("ToDi", kd_rate=0.5)
    a = crit(model(ids), labels, teacher)
    b = crit(model(ids), labels, padded)
    torch.testing.assert_close(a.loss, b.loss)


def test_kd_rate_one_keeps_ce_as_statistic_only():
    model = TinyLM()
    ids, labels, teacher = batch()
    out = DistillationLoss("forward_kl", kd_rate=1.0)(model(ids), labels, teacher)
    torch.testing.assert_close(out.loss, out.stats.kd)
    assert out.stats.ce > 0


def test_planner_mask_temperature_and_weight_are_applied():
    class Half:
        def plan(self, student_logits, teacher_logits, mask, temperature, *, labels):
            assert labels.shape == mask.shape
            keep = mask.clone()
            keep[:, ::2] = False
            temps = torch.full(mask.shape, 1.5)
            weight = temps**2
            return KDPlan(mask=keep, temperature=temps, weight=weight, stats={"ratio": keep.sum() / mask.sum()})

    model = TinyLM()
    ids, labels, teacher = batch()
    logits = model(ids)
    out = DistillationLoss("reverse_kl", kd_rate=1.0, planner=Half())(logits, labels, teacher)
    keep = labels != -100
    keep[:, ::2] = False
    expected = 2.25 * divergence("reverse_kl", logits, teacher, temperature=1.5)[keep].sum()
    torch.testing.assert_close(out.loss, expected)
    assert out.stats.kd_tokens == keep.sum() and "ratio" in out.stats.planner


def test_todi_alpha_diagnostic_is_a_mean_in_unit_interval():
    model = TinyLM()
    ids, labels, teacher = batch()
    out = DistillationLoss("ToDi", kd_rate=0.5, beta=2.0)(model(ids), labels, teacher, diagnostics=True)
    mean_alpha = out.diagnostics["todi_alpha"] / out.stats.kd_tokens
    assert 0.0 < mean_alpha < 1.0


def test_bad_configuration_and_inputs_are_clear_errors():
    model = TinyLM()
    ids, labels, teacher = batch()
    with pytest.raises(ValueError, match="kd_rate"):
        DistillationLoss("ToDi", kd_rate=1.5)
    with pytest.raises(ValueError, match="objective"):
        DistillationLoss(None, kd_rate=0.5)
    with pytest.raises(TypeError, match="beta"):
        DistillationLoss("forward_kl", beta=2.0)
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss("ToDi")(model(ids), labels)
    with pytest.raises(ValueError, match="labels"):
        DistillationLoss("ToDi")(model(ids), labels[:, :-1], teacher)
