"""Sparse teacher targets (the coarsened "top-k + one bucket" divergences) and the teacher cache:
equality with the live teacher at k = V, chunked = reference, the cache's build, resume, checks and
errors, and training from it through code/distillation.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from todi.loss.criterion import DistillationLoss
from todi.kernels import SparseTargets
from todi.cache.build import teacher_targets
from todi.cache.store import CacheError, TeacherCache

from _cases import CASES, IDS
from _training import REPO, cli, make_dolly, make_gpt2_pair, read_metrics, subprocess_env

F_DIVERGENCES = ("forward_kl", "reverse_kl", "js_divergence", "tvd", "skewed_forward_kl", "skewed_reverse_kl",
                 "generalized_jsd")


def _batch(seed=0, v=61, shape=(3, 5)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, v, generator=g) * 3
    t = torch.randn(*shape, v, generator=g) * 3
    labels = torch.randint(0, v, shape, generator=g)
    labels[0, :2] = -100
    return s, t, labels


def _sparse(t, k, temperature):
    ids, log_probs = teacher_targets(t.reshape(-1, t.shape[-1]), k, temperature)
    return SparseTargets(ids.reshape(*t.shape[:-1], -1), log_probs.reshape(*t.shape[:-1], -1), temperature)


def _run(crit, s, labels, teacher=None, sparse=None):
    leaf = s.clone().requires_grad_(True)
    out = crit(leaf, labels, teacher, teacher_sparse=sparse, diagnostics=True)
    out.loss.backward()
    return out, leaf.grad


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_k_equal_to_the_vocabulary_gives_the_live_teacher_losses(name, params, impl):
    s, t, labels = _batch()
    crit = DistillationLoss(name, kd_rate=0.6, temperature=1.7, impl=impl, **params)
    live, live_grad = _run(crit, s, labels, teacher=t)
    cached, cached_grad = _run(crit, s, labels, sparse=_sparse(t, t.shape[-1], 1.7))
    torch.testing.assert_close(cached.loss, live.loss, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(cached_grad, live_grad, rtol=2e-4, atol=2e-6)
    assert cached.diagnostics.keys() == live.diagnostics.keys()
    for key in live.diagnostics:
        torch.testing.assert_close(cached.diagnostics[key], live.diagnostics[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_chunked_sparse_matches_the_reference_and_float64(name, params):
    s, t, labels = _batch(seed=3)
    sparse = _sparse(t, 6, 2.0)
    out = {impl: _run(DistillationLoss(name, kd_rate=1.0, temperature=2.0, impl=impl, **params), s, labels, sparse=sparse)
           for impl in ("reference", "chunked")}
    (ref, ref_grad), (got, grad) = out["reference"], out["chunked"]
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    if name == "forward_kl":  # an independent float64 coarsening: buckets = the top-6 entries + the rest
        mask = labels.ne(-100)
        q = torch.softmax(s.double() / 2.0, -1)
        p = torch.softmax(t.double() / 2.0, -1)
        ids = sparse.ids
        pk, qk = p.gather(-1, ids), q.gather(-1, ids)
        pc = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
        qc = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
        exact = ((pc * (pc / qc).log()).sum(-1) * mask).sum()
        assert abs(float(got.loss.detach()) - float(exact)) < 1e-4 * float(exact)


@pytest.mark.parametrize("name", F_DIVERGENCES)
def test_coarsened_f_divergences_are_lower_bounds(name):
    s, t, labels = _batch(seed=4)
    crit = DistillationLoss(name, kd_rate=1.0, temperature=1.0)
    live = crit(s, labels, t).loss
    for k in (1, 4, 16):
        assert float(crit(s, labels, teacher_sparse=_sparse(t, k, 1.0)).loss) <= float(live) + 1e-5


def test_all_masked_batch_gives_a_finite_zero():
    s, t, labels = _batch()
    labels[:] = -100
    out, grad = _run(DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0), s, labels, sparse=_sparse(t, 5, 2.0))
    assert float(out.loss) == 0.0 and torch.isfinite(grad).all() and (grad == 0).all()


def test_adakd_plans_on_sparse_targets():
    from todi.loss.adakd import AdaKD

    s, t, labels = _batch(seed=5)
    planner = AdaKD(10, warmup=0.0)
    crit = DistillationLoss("ToDi", kd_rate=1.0, temperature=2.0, planner=planner)
    out, grad = _run(crit, s, labels, sparse=_sparse(t, 8, 2.0))
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    assert float(out.stats.kd_tokens) == float(labels.ne(-100).sum())  # r = 1 at the start


def test_bad_sparse_shapes_are_a_clear_error():
    s, t, labels = _batch()
    sparse = _sparse(t, 5, 2.0)
    bad = SparseTargets(sparse.ids[:, :2], sparse.log_probs[:, :2], 2.0)
    with pytest.raises(ValueError, match="sparse teacher targets"):
        DistillationLoss("ToDi")(s, labels, teacher_sparse=bad)


# ---- the cache, through its entry point ---------------------------------------------------------

@pytest.fixture(scope="module")
def setup(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    student, teacher = make_gpt2_pair(shared_dir, root / "models")
    data = make_dolly(shared_dir, root / "dolly", n_train=12, n_dev=4)
    return student, teacher, data


def build(teacher, data, out, *extra, check=True):
    cmd = [sys.executable, str(REPO / "code/cache_teacher.py"), "--teacher-model-path", str(teacher),
           "--data-dir", str(data), "--out", str(out), "--top-k", "16", "--kd-temperature", "2.0",
           "--max-length", "64", "--max-prompt-length", "48", "--part-size", "5", "--batch-size", "4", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_cache_build_resume_checks_and_training(setup, tmp_path):
    student, teacher, data = setup
    out = tmp_path / "cache"
    first = build(teacher, data, out)
    assert "top-16 at temperature 2: mean tail mass P_R" in first.stdout + first.stderr  # the cost, said at build
    totals = json.loads((out / "complete.json").read_text())
    cache = TeacherCache(out)
    assert totals["examples"] == 12 and cache.bytes_per_token == 4 * 16 + 2 * 17  # int32 ids, fp16 log-probs
    assert cache.bytes_per_token <= totals["bytes_per_token"] < 1.1 * cache.bytes_per_token  # + the .npy headers
    parts = sorted((out / "parts").iterdir())
    assert len(parts) == 3  # 12 examples in parts of 5

    # the cached targets are the teacher's: recompute one example's
    from todi.data.instructions import Collator, load_split
    from todi.models import load_model, load_tokenizer

    tok = load_tokenizer(teacher)
    split = load_split(data / "train.jsonl", tok, max_length=64, max_prompt_length=48)
    example = split.examples[3]
    batch = Collator(pad_id=tok.pad_token_id)([example])
    with torch.no_grad():
        logits = load_model(teacher).eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ids, log_probs = teacher_targets(logits[0][batch.labels[0].ne(-100)], 16, 2.0)
    got_ids, got_lp = cache.targets(example.index)
    assert (np.asarray(got_ids) == ids.numpy()).all()
    np.testing.assert_allclose(np.asarray(got_lp, dtype=np.float32), log_probs.numpy(), rtol=2e-3, atol=2e-3)

    # resume: a lost part is the only thing recomputed
    import shutil

    shutil.rmtree(parts[1])
    (out / "complete.json").unlink()
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache(out)
    build(teacher, data, out)
    assert sorted(p.name for p in (out / "parts").iterdir()) == sorted(p.name for p in parts)

    # other settings: refused, naming what differs
    result = build(teacher, data, out, "--top-k", "8", check=False)
    assert result.returncode != 0 and "k: cache 16, now 8" in result.stderr.strip().splitlines()[-1]

    # train from it: no teacher loaded, a step per micro-batch, the losses finite
    run = tmp_path / "run"
    argv = cli(student, data, run, teacher=teacher, objective="ToDi", **{"teacher-model-path": None,
               "teacher-cache": out, "criterion": "various_divergence", "kd-objective": "ToDi",
               "kd-temperature": 2.0, "do-valid": True})
    result = subprocess.run([sys.executable, str(REPO / "code/distillation.py"), *argv], capture_output=True,
                            text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    logged = read_metrics(run)
    assert logged and all(math.isfinite(r["loss"]) and r["kd"] > 0 for r in logged)
    assert all(0 < r["cache_tail_mass"] < 1 for r in logged)  # and during training
    assert "teacher:" not in result.stdout  # the teacher model was never loaded

    # a cache for other settings: a clear error naming the difference
    result = subprocess.run([sys.executable, str(REPO / "code/distillation.py"),
                             *[a if a != "2.0" else "1.0" for a in argv], "--no-resume"],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode != 0 and "temperature: cache 2.0, run 1.0" in (result.stdout + result.stderr)


def test_corrupt_part_is_a_clear_error(tmp_path):
    root = tmp_path / "cache"
    (root / "parts/part-00000000-00001").mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps({"format": 1, "settings": {"k": 2, "temperature": 1.0},
                                                "fingerprint": {}}))
    (root / "complete.json").write_text("{}")
    part = root / "parts/part-00000000-00001"
    np.save(part / "ids.npy", np.zeros((3, 2), dtype=np.int32))
    np.save(part / "log_probs.npy", np.zeros((2, 3), dtype=np.float16))  # truncated: 2 of 3 tokens
    (part / "index.json").write_text(json.dumps({"examples": [[0, 0, 3]]}))
    with pytest.raises(CacheError, match="truncated or corrupt"):
        TeacherCache(root)
    (part / "ids.npy").write_bytes(b"not an array")
    with pytest.raises(CacheError, match="unreadable part"):
        TeacherCache(root)
