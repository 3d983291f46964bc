"""Short in-process training runs (one process, gloo): every objective, SFT, LoRA, Llama, padding.

Each KD run's first logged loss is checked against the loss computed outside the trainer from
the same data plan, so objective, temperature, parameters, kd_rate, teacher and token
normalisation are all wired as the command line says.
"""

from __future__ import annotations

import json

import pytest
import torch

from _training import cli, first_step_loss, read_metrics
from todi.loss.divergence import DIVERGENCES


def train(argv):
    from todi.training.cli import main

    main([str(a) for a in argv])


PARAMS = {"ToDi": {"beta": 2.0}, "skewed_forward_kl": {"skew_lambda": 0.3}, "skewed_reverse_kl": {"skew_lambda": 0.2},
          "adaptive_kl": {"adaptive_kl_alpha": 0.4}}
FLAG = {"beta": "todi-beta", "skew_lambda": "skew-lambda", "adaptive_kl_alpha": "adaptive-kl-alpha"}


@pytest.mark.parametrize("objective", list(DIVERGENCES))
def test_kd_first_step_loss_matches_the_criterion(objective, process_group, pair, dolly, tmp_path):
    student, teacher = pair
    params = PARAMS.get(objective, {})
    flags = {FLAG[k]: v for k, v in params.items()}
    grouped = objective == "tvd"  # one of them through the length-grouped plan
    train(cli(student, dolly, tmp_path / "run", teacher=teacher, objective=objective, total_iters=1, kd_rate=0.7,
              group_by_length=grouped, **flags))
    logged = read_metrics(tmp_path / "run")
    assert [r["step"] for r in logged] == [1]
    expected = first_step_loss(student, dolly, teacher=teacher, objective=objective, kd_rate=0.7, params=params,
                               group_by_length=grouped)
    assert logged[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert logged[0]["kd"] > 0 and (objective != "ToDi" or 0 < logged[0]["todi_alpha"] < 1)
    # a final checkpoint that loads as a plain Hugging Face model
    (checkpoint,) = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("epoch1_step1")]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(checkpoint)


@pytest.mark.parametrize("objective", ["ToDi", None])
def test_fused_lm_head_run_matches_the_unfused_run(objective, process_group, pair, dolly, tmp_path):
    """--fused-lm-head never builds the student's logits, yet trains the same model."""
    student, teacher = pair
    kd = {"teacher": teacher, "objective": objective} if objective else {}
    runs = {}
    for fused in (False, True):
        train(cli(student, dolly, tmp_path / f"run{fused}", total_iters=3, fused_lm_head=fused, **kd))
        runs[fused] = read_metrics(tmp_path / f"run{fused}")
    assert len(runs[True]) == 3
    for plain, fused in zip(runs[False], runs[True]):
        for key in ("loss", "ce", "acc") + (("kd", "kd_token_ratio") if objective else ()):
            assert fused[key] == pytest.approx(plain[key], rel=1e-4), key
    with pytest.raises(SystemExit, match="--fused-lm-head"):
        train(cli(student, dolly, tmp_path / "bad", teacher=teacher, objective="ToDi", fused_lm_head=True,
                  kd_impl="reference"))


def test_sft_run_with_dev_evaluation_and_keep_best(process_group, pair, dolly, tmp_path):
    student, _ = pair
    run = tmp_path / "run"
    flags = dict(num_epochs=3, do_valid=True, eval_gen=True, do_sample=True, eval_gen_repeat_times=1,
                 keep_best_n_checkpoints=2, eval_batch_size=3, max_length=72, max_prompt_length=64,
                 gradient_accumulation_steps=1, batch_size=4, dev_num=2)
    train(cli(student, dolly, run, lr=5e-3, **flags))
    train_log, dev = read_metrics(run), read_metrics(run, "dev")
    assert [r["step"] for r in train_log] == list(range(1, 13)) and "kd" not in train_log[0]
    assert train_log[0]["loss"] == pytest.approx(first_step_loss(student, dolly, max_length=72, max_prompt_length=64,
                                                                 batch_size=4, grad_accum=1), rel=1e-5)
    assert train_log[-1]["loss"] < train_log[0]["loss"]
    assert [r["epoch"] for r in dev] == [1, 2, 3] and all(0 <= r["rougeL"] <= 100 for r in dev)
    kept = sorted(p.name for p in run.iterdir() if p.name.startswith("epoch"))
    assert len(kept) == 2
    # the two best by dev ROUGE-L (ties: the later one), named like the official checkpoints
    ranked = sorted(dev, key=lambda r: (-r["rougeL"], -r["step"]))[:2]
    assert kept == sorted(f"epoch{r['epoch']}_step{r['step']}_loss{r['loss']:.4f}_rougel{r['rougeL']:.4f}"
                          for r in ranked)
    args = json.loads((run / "args.json").read_text())
    assert args["world_size"] == 1 and args["deepspeed"]["train_micro_batch_size_per_gpu"] == 4
    from transformers import AutoModelForCausalLM

    from todi.models import load_tokenizer

    best = run / kept[0]
    trained = AutoModelForCausalLM.from_pretrained(best)
    initial = AutoModelForCausalLM.from_pretrained(student)
    assert not torch.equal(trained.transformer.h[0].mlp.c_fc.weight, initial.transformer.h[0].mlp.c_fc.weight)
    assert load_tokenizer(best).eos_token_id == 50256
    # the same command again finds the finished state and does nothing
    before = (run / "metrics.jsonl").read_text()
    train(cli(student, dolly, run, lr=5e-3, **flags))
    assert (run / "metrics.jsonl").read_text() == before
    # ... but not with other settings, unless asked to start over
    with pytest.raises(SystemExit, match=r"holds the state of a different run \(lr: 0.005 -> 0.001\)"):
        train(cli(student, dolly, run, **flags))
    train(cli(student, dolly, run, no_resume=True, **{**flags, "num_epochs": 1}))
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]


def test_gradient_accumulation_normalises_by_the_step_tokens(process_group, pair, dolly, tmp_path):
    """4 examples per step as 2 micro-batches of 2 or 1 of 4: the same steps, the same weights."""
    student, teacher = pair
    common = dict(teacher=teacher, objective="ToDi", total_iters=2, num_epochs=1)
    train(cli(student, dolly, tmp_path / "a", batch_size=2, gradient_accumulation_steps=2, **common))
    train(cli(student, dolly, tmp_path / "b", batch_size=4, gradient_accumulation_steps=1, **common))
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    # the gradient itself (before clipping), not only the Adam step that hides its scale
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-4)
    from todi.models import load_model

    (ca,), (cb,) = [[p for p in (tmp_path / d).iterdir() if p.name.startswith("epoch")] for d in "ab"]
    for (name, pa), (_, pb) in zip(load_model(ca).named_parameters(), load_model(cb).named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)


def test_fixed_padding_gives_the_same_losses(process_group, pair, dolly, tmp_path):
    """--pad-to-max-length (the official collation) and dynamic padding: the same run."""
    student, teacher = pair
    common = dict(teacher=teacher, objective="ToDi", total_iters=2, max_length=96, max_prompt_length=64,
                  gradient_accumulation_steps=1)
    train(cli(student, dolly, tmp_path / "dynamic", **common))
    train(cli(student, dolly, tmp_path / "fixed", pad_to_max_length=True, **common))
    dynamic, fixed = read_metrics(tmp_path / "dynamic"), read_metrics(tmp_path / "fixed")
    assert [r["loss"] for r in dynamic] == pytest.approx([r["loss"] for r in fixed], rel=1e-5)
    assert dynamic[0]["tokens_per_s"] > 0


def test_fixed_512_padding_gives_the_same_per_example_losses(pair, shared_dir):
    """The official code pads every batch to 512: per-example KD losses are the same with dynamic padding."""
    from todi.loss.criterion import DistillationLoss
    from todi.data.instructions import Collator, load_split
    from todi.models import load_model, load_tokenizer
    from todi.training.trainer import teacher_forward

    student, teacher = pair
    tok = load_tokenizer(student)
    split = load_split(shared_dir / "data/dolly/dev.jsonl", tok, max_length=512, max_prompt_length=256, limit=2)
    s_model, t_model = load_model(student).eval(), load_model(teacher).eval()
    criterion = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0)
    widths, losses = [], []
    for pad_to in (None, 512):
        batch = Collator(pad_id=tok.pad_token_id, pad_to=pad_to)(split.examples)
        with torch.no_grad():
            logits = s_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            t_logits = teacher_forward(t_model, batch)
            # one example at a time through the criterion, from the same padded forward passes
            losses.append([criterion(logits[i:i + 1], batch.labels[i:i + 1], t_logits[i:i + 1]).loss.item()
                           for i in range(len(split.examples))])
        widths.append(batch.input_ids.shape[1])
    assert widths[0] % 8 == 0 and widths[0] < 512 and widths[1] == 512
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_lora_student_with_a_lora_teacher_adapter(process_group, pair, dolly, tmp_path):
    from peft import LoraConfig, get_peft_model

    from todi.models import load_model

    student, teacher = pair
    adapted = get_peft_model(load_model(teacher), LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", fan_in_fan_out=True))
    for name, p in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=50.0)  # strong enough to move the teacher's near-uniform outputs
    adapted.save_pretrained(tmp_path / "teacher_adapter")
    train(cli(student, dolly, tmp_path / "run", teacher=teacher, objective="forward_kl", total_iters=2, peft="lora",
              peft_lora_r=4, peft_lora_alpha=8, peft_lora_dropout=0.0, teacher_peft_path=tmp_path / "teacher_adapter",
              gradient_checkpointing=True))
    logged = read_metrics(tmp_path / "run")
    expected = first_step_loss(student, dolly, teacher=teacher, objective="forward_kl",
                               teacher_adapter=tmp_path / "teacher_adapter")
    without_adapter = first_step_loss(student, dolly, teacher=teacher, objective="forward_kl")
    assert logged[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - without_adapter) > 100 * abs(logged[0]["loss"] - expected)
    (checkpoint,) = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("epoch")]
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "model.safetensors").exists()
    model = load_model(student, adapter_path=checkpoint, merge_adapter=True)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load_model(student).parameters())


def test_llama_pair_with_the_tinyllama_tokenizer(process_group, shared_dir, dolly, tmp_path):
    from todi.models import save_random_model

    llama = shared_dir / "model_hub/tinyllama/tinyllama-1.1b-3T"
    size = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
    student = save_random_model(llama, tmp_path / "student", seed=0, **size)
    teacher = save_random_model(llama, tmp_path / "teacher", seed=1, **{**size, "hidden_size": 48})
    train(cli(student, dolly, tmp_path / "run", teacher=teacher, objective="ToDi", total_iters=1))
    logged = read_metrics(tmp_path / "run")
    assert logged[0]["loss"] == pytest.approx(first_step_loss(student, dolly, teacher=teacher, objective="ToDi"),
                                              rel=1e-5)


def test_input_errors_are_reported_without_training(process_group, pair, dolly, tmp_path):
    student, teacher = pair
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text((dolly / "train.jsonl").read_text() + '{"prompt": "p"}\n')
    with pytest.raises(SystemExit, match=r"train.jsonl:17: missing field 'output'"):
        train(cli(student, bad, tmp_path / "run", total_iters=1))
    with pytest.raises(SystemExit, match="contradicts the DeepSpeed config"):
        train(cli(student, dolly, tmp_path / "run", teacher=teacher, objective="ToDi", teacher_model_fp16=True))
    with pytest.raises(SystemExit, match="needs --teacher-model-path"):
        train(cli(student, dolly, tmp_path / "run", criterion="various_divergence"))
    with pytest.raises(SystemExit, match="--resume: no resumable state"):
        train(cli(student, dolly, tmp_path / "fresh", resume=True))
    with pytest.raises(SystemExit, match="unknown divergence"):
        train(cli(student, dolly, tmp_path / "run", teacher=teacher, objective="kl_plus"))


def test_the_step_path_never_reads_device_values(process_group, pair, dolly, tmp_path, monkeypatch):
    """No .item()/.tolist()/float()/bool() on tensors from this project's code during optimizer steps
    (on a GPU each would stall the host until the device catches up); the log step reduces once."""
    from pathlib import Path

    import todi
    from todi.training.args import parse_args
    from todi.training.trainer import Trainer

    student, teacher = pair
    args = parse_args([str(a) for a in cli(student, dolly, tmp_path / "run", teacher=teacher, objective="ToDi",
                                           log_interval=2)])
    trainer = Trainer(args, process_group)
    trainer._start_time = trainer._last_log_time = 0.0
    plan, batches = trainer._loader(0, 0)
    package = str(Path(todi.__file__).parent)
    calls = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            caller = __import__("sys")._getframe(1).f_code
            if caller.co_filename.startswith(package):
                calls.append((_name, caller.co_filename.rsplit("/", 1)[-1], caller.co_name))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for _ in range(2):
        trainer._optimizer_step([next(batches) for _ in range(args.gradient_accumulation_steps)], diagnostics=True)
    # The chunked loss is the CPU path (on CUDA the Triton kernels run): it compacts rows and checks
    # labels on the host, which on the CPU costs nothing. Everything else must not read values.
    cpu_only = {("chunked.py", "forward"), ("chunked.py", "_log_probs"), ("chunked.py", "__init__"),
                ("autograd.py", "_scale_rows_"), ("autograd.py", "check_labels")}
    calls = [c for c in calls if c[1:] not in cpu_only]
    assert calls == []
    trainer.state.global_step = 2
    trainer._log_interval(0)
    assert [c for c in calls if c[0] == "tolist"] == [("tolist", "step_metrics.py", "reduce")]
    assert {c[2] for c in calls} <= {"reduce", "_log_interval"}  # (the grad norm DeepSpeed keeps)
