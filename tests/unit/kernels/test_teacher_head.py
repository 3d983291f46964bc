"""Teacher logits from a hidden-state cache (:class:`todi.kernels.TeacherHead`: final hidden states and
the output layer, computed a chunk of rows at a time) give the loss, gradient and diagnostics of the
materialised logits for every registered objective, on every CPU path (reference, chunked, the fused
student head), with AdaKD's planner (IDTS temperatures included) and a soft-capped head; the float64
value of one case is checked independently. The Triton path: test_kernels_triton.py."""

from __future__ import annotations

import pytest
import torch

from todi.kernels import TeacherHead, teacher_rows
from todi.loss.adakd import AdaKD
from todi.loss.criterion import DistillationLoss

from _cases import CASES, IDS

V, H = 37, 12


def make(seed=0, softcap=None):
    g = torch.Generator().manual_seed(seed)
    head = TeacherHead(torch.randn(2, 6, H, generator=g), torch.randn(V + 4, H, generator=g) * 0.7,
                       torch.randn(V + 4, generator=g), softcap)
    student = torch.randn(2, 6, V, generator=g) * 2
    labels = torch.randint(0, V, (2, 6), generator=g)
    labels[0, :2] = -100
    return head, student, labels


def run(crit, student, labels, teacher):
    leaf = student.clone().requires_grad_(True)
    out = crit(leaf, labels, teacher, diagnostics=True)
    out.loss.backward()
    return out, leaf.grad


def assert_same(a, b):
    (out_a, grad_a), (out_b, grad_b) = a, b
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-6)
    assert out_a.diagnostics.keys() == out_b.diagnostics.keys()
    for key in out_a.diagnostics:
        torch.testing.assert_close(out_a.diagnostics[key], out_b.diagnostics[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_every_objective_reads_the_head_as_its_logits(name, params, impl):
    head, student, labels = make()
    crit = DistillationLoss(name, kd_rate=0.6, temperature=1.7, impl=impl, vocab_size=V, **params)
    assert_same(run(crit, student, labels, head), run(crit, student, labels, head.materialize()))


@pytest.mark.parametrize("difficulty", ["hellinger", "cross_entropy"])
def test_adakd_plans_the_same_tokens_and_temperatures(difficulty):
    head, student, labels = make(seed=1, softcap=3.0)
    outs = []
    for teacher in (head, head.materialize()):
        crit = DistillationLoss("ToDi", kd_rate=1.0, temperature=2.0, vocab_size=V,
                                planner=AdaKD(10, warmup=0.0, min_ratio=0.3, difficulty=difficulty))
        outs.append(run(crit, student, labels, teacher))
    assert_same(*outs)
    assert float(outs[0][0].stats.kd_tokens) == float(outs[1][0].stats.kd_tokens)


def test_the_fused_student_head_reads_it_chunk_by_chunk():
    head, _, labels = make(seed=2)
    g = torch.Generator().manual_seed(9)
    hidden, weight = torch.randn(2, 6, 8, generator=g), torch.randn(V, 8, generator=g)
    crit = DistillationLoss("skewed_reverse_kl", kd_rate=0.5, temperature=2.0, impl="chunked", vocab_size=V)
    got = []
    for teacher in (head, head.materialize()):
        h = hidden.clone().requires_grad_(True)
        out = crit.loss_from_hidden(h, weight, None, labels, teacher, chunk_size=3)
        out.loss.backward()
        got.append((out.loss.detach(), h.grad))
    torch.testing.assert_close(got[0][0], got[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0][1], got[1][1], rtol=1e-4, atol=1e-6)


def test_rows_and_softcap_against_float64():
    head, student, labels = make(seed=3, softcap=2.5)
    z = head.hidden.double().reshape(-1, H) @ head.weight.double().T + head.bias.double()
    expected = torch.tanh(z / 2.5) * 2.5
    idx = torch.tensor([0, 5, 7])
    torch.testing.assert_close(teacher_rows(head.flat(), idx).double(), expected[idx], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher_rows(head.flat(), slice(2, 4)).double(), expected[2:4], rtol=1e-5, atol=1e-5)
    # forward KL over the compared vocabulary, in float64, from the capped logits
    out, _ = run(DistillationLoss("forward_kl", kd_rate=1.0, temperature=1.0, vocab_size=V), student, labels, head)
    p = torch.log_softmax(expected[:, :V], -1)
    q = torch.log_softmax(student.double().reshape(-1, V), -1)
    mask = labels.reshape(-1).ne(-100)
    exact = ((p.exp() * (p - q)).sum(-1) * mask).sum()
    assert abs(float(out.loss.detach()) - float(exact)) < 1e-5 * float(exact)


def test_a_compared_vocabulary_beyond_the_heads_rows_is_an_error():
    head, _, labels = make()
    wide = torch.randn(2, 6, V + 10)
    with pytest.raises(ValueError, match=f"exceeds the logits' vocabulary \\(student {V + 10}, teacher {V + 4}\\)"):
        DistillationLoss("ToDi", vocab_size=V + 6)(wide, labels, head)


@pytest.mark.parametrize("name", ["ToDi", "adaptive_kl", "ab_divergence"])
def test_teacher_rows_in_many_chunks_give_the_same_loss(name, monkeypatch):
    """Chunks of 3 teacher rows (the budget shrunk) on the chunked path and in AdaKD's difficulty."""
    from todi.kernels import teacher_head

    head, student, labels = make(seed=4)
    crit = lambda: DistillationLoss(name, kd_rate=0.5, temperature=1.5, vocab_size=V,  # noqa: E731
                                    planner=AdaKD(10, warmup=0.0, min_ratio=0.5))
    whole = run(crit(), student, labels, head)
    monkeypatch.setitem(teacher_head.TEACHER_HEAD_BYTES, "cpu", 4 * (V + 4) * 3)
    assert teacher_head.teacher_head_rows(12, V + 4, "cpu") == 3
    assert_same(run(crit(), student, labels, head), whole)
    assert_same(run(crit(), student, labels, head.materialize()), whole)
