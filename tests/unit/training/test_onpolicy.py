"""On-policy KD inside the trainer (in-process, one process, gloo), and the data mixer's rules.

* GKD with λ = 1: every trained token is the student's own sample, up to and including its EOS, and
  the teacher saw exactly prompt + sample; the rollouts are the seeded sampler's (a pure function of
  seed, step and example index);
* DistiLLM's threshold rule and draw: τ rises by 0.1 (to at most 1) when the dev loss exceeds the
  reference by eps, ρ = τ·(1 − step/T), generation until the buffer is full, then replay;
* the step draw depends only on (seed, step).
"""

from __future__ import annotations

import re

import pytest

from _training import cli, read_metrics
from todi.util.labels import IGNORE_INDEX


def test_gkd_lambda_one_trains_on_the_students_samples_seen_by_the_teacher(process_group, pair, dolly, tmp_path,
                                                                           monkeypatch):
    from todi.generation import rollout
    from todi.training import trainer
    from todi.training.cli import main

    sampled, seen = [], []
    real_sample, real_teacher = rollout.sample_continuations, trainer.teacher_forward

    def record_sample(model, prompts, example_ids, config, **kw):
        out = real_sample(model, prompts, example_ids, config, **kw)
        sampled.append((prompts, example_ids, out, kw["seed"], config))
        return out

    def record_teacher(teacher, batch):
        seen.append((batch.input_ids.clone(), batch.labels.clone(), batch.attention_mask.clone()))
        return real_teacher(teacher, batch)

    monkeypatch.setattr(rollout, "sample_continuations", record_sample)  # the HF engine's sampler
    monkeypatch.setattr(trainer, "teacher_forward", record_teacher)
    student, teacher = pair
    main([str(a) for a in cli(student, dolly, tmp_path / "run", teacher=teacher, objective="reverse_kl", total_iters=2,
                              max_length=60, data_mode="gkd", student_gen_ratio=1.0, rollout_max_new_tokens=6)])
    logged = read_metrics(tmp_path / "run")
    assert [r["gen_share"] for r in logged] == [1.0, 1.0]
    assert len(sampled) == len(seen) == 4  # 2 steps × 2 micro-batches
    stop = {50256}
    for (prompts, _, continuations, _, _), (ids, labels, mask) in zip(sampled, seen):
        for i, (prompt, cont) in enumerate(zip(prompts, continuations)):
            assert 1 <= len(cont) <= 6 and all(t not in stop for t in cont[:-1])  # ends at its first EOS, if any
            n = len(prompt) + len(cont) - 1  # positions the models read: every id but the last
            assert ids[i, :n].tolist() == (prompt + cont)[:-1] and mask[i].sum() == n  # the teacher's input
            targets = labels[i][labels[i] != IGNORE_INDEX].tolist()
            assert targets == cont  # every trained token is the student's sample, EOS included
    # the rollouts are the seeded sampler's: recomputed from the saved run's seed, step and example ids
    from todi.generation.rollout import rollout_seed

    assert sorted({s[3] for s in sampled}) == sorted({rollout_seed(10, 0), rollout_seed(10, 1)})
    assert all(r["loss"] == pytest.approx(0.5 * r["kd"], rel=1e-6) for r in logged)  # no CE on sampled tokens


def schedule(**overrides):
    from todi.generation.sampling import SamplingConfig
    from todi.training.onpolicy import MixerSettings, Schedule

    settings = dict(mode="distillm", ratio=0.5, seq_kd=False, init_threshold=0.0, loss_eps=0.1, capacity=3,
                    sampling=SamplingConfig(max_length=12, max_prompt_length=8, no_repeat_ngram_size=0))
    return Schedule(MixerSettings(**{**settings, **overrides}), seed=3, total_steps=10)


def test_distillm_threshold_rule():
    m = schedule()
    m.on_dev_loss(2.0)  # the reference
    m.on_dev_loss(2.05)  # not by eps
    assert m.tau == 0.0 and m.reference_loss == 2.0
    m.on_dev_loss(2.1)
    assert m.tau == pytest.approx(0.1) and m.reference_loss == 2.1
    for loss in (2.3, 2.5, 2.7, 2.9, 3.1, 3.3, 3.5, 3.7, 3.9, 4.1):
        m.on_dev_loss(loss)
    assert m.tau == 1.0  # capped
    assert m.rho(5) == pytest.approx(0.5)


def test_distillm_draw_generates_until_full_then_replays():
    from todi.training.onpolicy import step_uniform

    m = schedule(init_threshold=1.0)
    assert all(m.kind(step, stored=2) == "student" for step in range(10))  # r < τ = 1 and the buffer not full
    kinds = [m.kind(step, stored=3) for step in range(10)]
    expected = ["student" if step_uniform(3, step, 1) < m.rho(step) else "replay" for step in range(10)]
    assert kinds == expected and "replay" in kinds and "student" in kinds
    assert schedule(init_threshold=0.0).kind(4, stored=0) == "dataset"  # τ = 0: the dataset only


def test_the_draw_depends_only_on_seed_and_step():
    from todi.training.onpolicy import step_uniform

    draws = [step_uniform(10, s, 1) for s in range(200)]
    assert draws == [step_uniform(10, s, 1) for s in range(200)] and len(set(draws)) == 200
    assert 0.4 < sum(d < 0.5 for d in draws) / 200 < 0.6  # about uniform
    assert step_uniform(11, 0, 1) != draws[0] and step_uniform(10, 0, 2) != draws[0]
    m = schedule(mode="gkd", ratio=0.5)  # seed 3
    assert [m.kind(s, stored=0) for s in range(20)] == ["student" if step_uniform(3, s, 1) < 0.5 else "dataset"
                                                        for s in range(20)]


@pytest.mark.parametrize("extra,message", [
    (["--data-mode", "distillm"], "--data-mode distillm adapts to the dev loss: it needs --do-valid"),
    (["--data-mode", "gkd", "--teacher-cache", "c", "--teacher-model-path", None],  # the cache has no samples' scores
     "--data-mode gkd needs --teacher-model-path"),
    (["--data-mode", "gkd", "--kd-rate", "0"], "it needs --criterion various_divergence with --kd-rate > 0"),
    (["--data-mode", "gkd", "--student-gen-ratio", "-0.1"], "--student-gen-ratio -0.1: must be in [0, 1]"),
    (["--data-mode", "gkd", "--rollout-top-p", "0"], "--rollout-top-p in (0, 1]"),
    (["--data-mode", "gkd", "--rollout-sync-interval", "2"], "--rollout-sync-interval 2 needs --rollout-backend vllm"),
    (["--data-mode", "gkd", "--rollout-backend", "vllm", "--rollout-sync-interval", "0"],
     "--rollout-sync-interval 0: must be at least 1"),
    (["--rollout-backend", "vllm"], "--rollout-backend and --rollout-sync-interval apply to on-policy runs"),
    (["--vllm-memory-share", "1.5"], "--vllm-memory-share 1.5: must be in (0, 1)"),
])
def test_bad_on_policy_settings_are_one_error_line(extra, message, tmp_path):
    from todi.training.args import parse_args

    argv = [str(a) for a in cli("s", "d", tmp_path, teacher="t", objective="ToDi")]
    if extra[-1] is None:  # drop a flag of the base command line
        i = argv.index(extra[-2])
        argv, extra = argv[:i] + argv[i + 2:], extra[:-2]
    with pytest.raises(SystemExit, match=re.escape(message)):
        parse_args(argv + extra)


def test_on_policy_needs_the_students_tokenizer_in_the_teacher():
    from types import SimpleNamespace

    from todi.training.setup import build_mixer

    args = SimpleNamespace(data_mode="gkd")
    data = SimpleNamespace(collate=SimpleNamespace(teacher_pad_id=2))
    with pytest.raises(ValueError, match="the teacher must share the student's tokenizer"):
        build_mixer(args, None, data, 10, 1)
    args = SimpleNamespace(data_mode="distillm", batch_size=4, gradient_accumulation_steps=2, replay_capacity=10)
    with pytest.raises(ValueError, match=r"--replay-capacity 10 is less than a global batch \(16 = "):
        build_mixer(args, SimpleNamespace(world_size=2), SimpleNamespace(collate=SimpleNamespace(teacher_pad_id=None)),
                    10, 1)


def test_seq_kd_trains_on_the_teachers_samples(process_group, pair, dolly, tmp_path, monkeypatch):
    from todi.generation import rollout
    from todi.training.cli import main

    widths, real_sample = [], rollout.sample_continuations

    def record(model, *args, **kw):
        widths.append(model.config.n_embd)
        return real_sample(model, *args, **kw)

    monkeypatch.setattr(rollout, "sample_continuations", record)
    student, teacher = pair
    main([str(a) for a in cli(student, dolly, tmp_path / "run", teacher=teacher, objective="ToDi", total_iters=2,
                              max_length=60, data_mode="gkd", student_gen_ratio=0.0, seq_kd=True,
                              rollout_max_new_tokens=4)])
    from todi.models import load_model

    assert [r["gen_share"] for r in read_metrics(tmp_path / "run")] == [1.0, 1.0]
    assert set(widths) == {load_model(teacher).config.n_embd} != {load_model(student).config.n_embd}
