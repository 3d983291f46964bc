"""Command line of ``code/distillation.py``: the official ToDi/DSKD flags first, then this project's.

Official flags keep their names, defaults and meanings. A few official flags are *labels*
(``--task``, ``--base-path``, ``--model-type``, ``--teacher-model-type``): they are recorded in
args.json and the log, and the architecture itself is read from each model's config.json. Flags
that would contradict the single source of truth for the precision (the DeepSpeed config) are
checked, never ignored: see :func:`check_args`.
"""

from __future__ import annotations

import argparse
import os

from todi.generation.colocated import COLOCATED_MEMORY_SHARE
from todi.loss.adakd import DIFFICULTIES
from todi.kernels import IMPLEMENTATIONS
from todi.training.monitor import BACKENDS, missing_package, parse_backends
from todi.training.onpolicy import DATA_MODES
from todi.objectives import Param, all_objectives, canonical_name, get
from todi.util.plugins import load_plugins

__all__ = ["DefaultsHelpFormatter", "build_parser", "check_args", "objective_kwargs", "parse_args", "run_identity"]

CRITERIA = ("cross_entropy", "various_divergence")
LR_DECAY_STYLES = ("constant", "linear", "cosine", "noam")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows every flag's default, except where there is none to show (switches, lists, unset)
    or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _not_identity(action: argparse.Action) -> argparse.Action:
    """Mark a flag that does not change what a run computes (logging, evaluation, I/O, labels):
    a resumed run may change it. Every other flag is part of the run identity (:func:`run_identity`)."""
    action.run_identity = False
    return action


def _model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model-path", required=True, help="student: a Hugging Face model directory")
    _not_identity(g.add_argument("--model-type", default="gpt2", help="label of the student family (recorded; the architecture comes from config.json)"))
    g.add_argument("--teacher-model-path", default=None, help="teacher: a Hugging Face model directory (KD only)")
    _not_identity(g.add_argument("--teacher-model-type", default=None, help="label of the teacher family (recorded)"))
    g.add_argument("--teacher-peft-path", default=None, help="LoRA adapter merged into the teacher before training")
    g.add_argument("--teacher-cache", default=None, metavar="DIR",
                   help="distil from precomputed teacher targets (code/cache_teacher.py) instead of a live teacher: "
                        "no teacher is loaded; the cache must match the data, tokenizer, lengths and temperature")
    _not_identity(g.add_argument("--teacher-model-fp16", action="store_true",
                   help="official flag; the teacher always uses the DeepSpeed config's precision, so this is "
                        "only accepted together with an fp16 config"))
    _not_identity(g.add_argument("--model-dtype", choices=("fp16", "bf16", "fp32"), default=None,
                   help="official flag; must agree with the DeepSpeed config's precision when given"))
    _not_identity(g.add_argument("--n-gpu", type=int, default=None,
                   help="official flag: processes per node; checked against the launcher's when given"))
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the student's activations in the backward (less memory, more compute)")
    g.add_argument("--peft", choices=("lora",), default=None, help="train a LoRA adapter instead of all weights")
    g.add_argument("--peft-lora-r", type=int, default=16, help="LoRA rank (with --peft lora)")
    g.add_argument("--peft-lora-alpha", type=int, default=64, help="LoRA scaling α (the update is scaled by α / r)")
    g.add_argument("--peft-lora-dropout", type=float, default=0.1, help="dropout on the LoRA input")
    _not_identity(g.add_argument("--compile", action="store_true", help="torch.compile the student and teacher forward"))


def _runtime_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("runtime")
    _not_identity(g.add_argument("--task", default=None, help="label of the run (recorded)"))
    _not_identity(g.add_argument("--base-path", default=None, help="project root (recorded)"))
    _not_identity(g.add_argument("--do-train", action="store_true", help="train (this entry point only trains; required)"))
    _not_identity(g.add_argument("--do-valid", action="store_true", help="evaluate on DATA_DIR/dev.jsonl every --eval-interval epochs"))
    _not_identity(g.add_argument("--save-dir", required=True, help="run directory: checkpoints, args.json, metrics.jsonl, resume state"))
    _not_identity(g.add_argument("--log-interval", type=int, default=10, help="optimizer steps between two log lines"))
    _not_identity(g.add_argument("--save-interval", type=int, default=1, help="epochs between two checkpoints"))
    _not_identity(g.add_argument("--eval-interval", type=int, default=1, help="epochs between two dev evaluations"))
    _not_identity(g.add_argument("--keep-best-n-checkpoints", type=int, default=3,
                   help="keep the N best checkpoints (dev ROUGE-L with --eval-gen, dev loss with --do-valid, "
                        "else the N latest)"))
    g.add_argument("--criterion", choices=CRITERIA, default="cross_entropy",
                   help="cross_entropy: SFT; various_divergence: KD with --kd-objective")
    _not_identity(g.add_argument("--eval-tqdm", action="store_true", help="progress bar during dev generation"))
    _not_identity(g.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; LOCAL_RANK wins"))
    _not_identity(g.add_argument("--resume", action="store_true",
                   help="resume from SAVE_DIR/resume (an error if there is none); without it a run resumes "
                        "automatically when that state exists, unless --no-resume"))
    _not_identity(g.add_argument("--no-resume", action="store_true", help="start from scratch even if SAVE_DIR holds a resumable state"))
    _not_identity(g.add_argument("--state-interval", type=int, default=500,
                   help="optimizer steps between two resumable states (also written at every epoch end); 0: epoch ends only"))
    _not_identity(g.add_argument("--stop-after-iters", type=int, default=None,
                   help="leave after this many optimizer steps of this invocation, with a resumable state "
                        "(for time-limited jobs; rerun the same command to continue)"))


def _data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", required=True, help="directory with train.jsonl and dev.jsonl (prompt, output)")
    _not_identity(g.add_argument("--num-workers", type=int, default=1, help="DataLoader worker processes for collation"))
    g.add_argument("--train-num", type=int, default=-1, help="use the first N training examples (-1: all)")
    _not_identity(g.add_argument("--dev-num", type=int, default=-1, help="use the first N dev examples (-1: all)"))
    g.add_argument("--max-prompt-length", type=int, default=512, help="prompt tokens kept: the last ones, as in generation (the official code kept the first ones)")
    g.add_argument("--max-length", type=int, default=1024, help="prompt + response tokens (incl. EOS) kept")
    g.add_argument("--pad-to-max-length", action="store_true",
                   help="pad every batch to --max-length like the official code (default: to the longest "
                        "sequence of the batch, rounded up to a multiple of 8; the losses are the same)")
    g.add_argument("--group-by-length", action="store_true",
                   help="batches of similar lengths (less padding), shuffled across batches; changes which "
                        "examples share a step, not the set seen per epoch")


def _hp_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hyper-parameters")
    g.add_argument("--batch-size", type=int, default=32, help="micro-batch size per process")
    _not_identity(g.add_argument("--eval-batch-size", type=int, default=32,
                                 help="prompts per process and batch in dev evaluation (loss and generation)"))
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="micro-batches per optimizer step (the loss is normalised over all of their response tokens)")
    g.add_argument("--clip-grad", type=float, default=1.0, help="gradient clipping by global norm (0: off)")
    g.add_argument("--num-epochs", type=int, default=None,
                   help="passes over the training set (required unless --total-iters is given)")
    g.add_argument("--total-iters", type=int, default=None,
                   help="optimizer steps of the schedule (default: steps per epoch × epochs); training "
                        "stops at whichever of --total-iters and --num-epochs comes first")
    g.add_argument("--seed", type=int, default=1234, help="one seed for every process (not shifted by rank)")
    g.add_argument("--lr", type=float, required=True, help="peak learning rate of AdamW (required)")
    g.add_argument("--lr-min", type=float, default=1e-7, help="final learning rate of the cosine schedule")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (not on biases and norms)")
    g.add_argument("--warmup-iters", type=int, default=0, help="linear warm-up steps")
    g.add_argument("--lr-decay-style", choices=LR_DECAY_STYLES, default="noam",
                   help="learning-rate schedule after the warm-up (the official scripts pass cosine)")
    g.add_argument("--kd-rate", type=float, default=0.5, help="weight of the divergence; 1 − kd_rate weighs the CE")
    g.add_argument("--kd-temperature", type=float, default=1.0, help="applied to both logits, no T² factor")
    g.add_argument("--kd-objective", default="forward_kl",
                   help="one of " + ", ".join(o.name for o in all_objectives()) + " (or an alias)")
    _objective_param_args(parser)
    g.add_argument("--kd-impl", choices=IMPLEMENTATIONS, default="auto", help="implementation of the divergence")
    _not_identity(g.add_argument("--fused-lm-head", action="store_true",
                   help="compute the student's lm_head, CE and KD chunk by chunk from its hidden states, never "
                        "holding its logits (saves their memory; not with --adakd or --kd-impl reference)"))


def objective_flags() -> dict[str, list[tuple[str, Param]]]:
    """Every objective parameter's flag → [(objective, Param)], from the registry (flags may be shared)."""
    flags: dict[str, list[tuple[str, Param]]] = {}
    for objective in all_objectives():
        for p in objective.params:
            if p.flag:
                flags.setdefault(p.flag, []).append((objective.name, p))
    return flags


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _objective_param_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("objective parameters (from the objective registry; only the chosen one's apply)")
    for flag, owners in objective_flags().items():
        p = owners[0][1]
        names = ", ".join(name for name, _ in owners)
        g.add_argument(flag, type=float, default=None, metavar=p.name.upper(),
                       help=f"{p.help} (default {p.default:g}, range {p.range_text}; {names})")


def objective_kwargs(args: argparse.Namespace) -> dict[str, float]:
    """The chosen objective's parameters (keyword → value) from its flags (after :func:`check_args`)."""
    record = get(args.kd_objective)
    return {p.name: getattr(args, _dest(p.flag)) for p in record.params if p.flag}


def _check_objective_params(args: argparse.Namespace, fail) -> None:
    """Fill the chosen objective's flags with their defaults and check them; a flag of another
    objective is an error (it would be silently ignored)."""
    chosen = get(args.kd_objective) if args.criterion == "various_divergence" else None
    mine = {p.flag for p in chosen.params} if chosen is not None else set()
    for flag, owners in objective_flags().items():
        dest = _dest(flag)
        value = getattr(args, dest)
        if flag not in mine:
            if value is not None:
                fail(f"{flag} is a parameter of {', '.join(n for n, _ in owners)}, not of "
                     f"{chosen.name if chosen else 'SFT (--criterion cross_entropy)'}")
            continue
        param = next(p for name, p in owners if name == chosen.name)
        try:
            setattr(args, dest, param.check(param.default if value is None else value, chosen.name))
        except ValueError as e:
            fail(str(e))
    if chosen is not None and chosen.check is not None:
        try:
            chosen.check(objective_kwargs(args))
        except ValueError as e:
            fail(str(e))


def _generation_args(parser: argparse.ArgumentParser) -> None:
    """Dev generation only scores checkpoints: none of these flags is part of the run identity."""
    g = parser.add_argument_group("generation (dev evaluation; use the same values for the test evaluation)")

    def add(*names, **kwargs):
        return _not_identity(g.add_argument(*names, **kwargs))

    add("--eval-gen", action="store_true", help="sample answers to the dev prompts and score ROUGE-L")
    add("--do-sample", action="store_true", help="sample (default: greedy decoding)")
    add("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    add("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    add("--temperature", type=float, default=1.0, help="sampling temperature")
    add("--no-repeat-ngram-size", type=int, default=6,
        help="never repeat an n-gram of this size (prompt included, as Hugging Face does; 0: off)")
    add("--dev-no-repeat-ngram-size", type=int, default=None,
                   help="override --no-repeat-ngram-size for dev generation only (the official code used 0 "
                        "there); default: the same as the test")
    add("--dev-gen-backend", choices=["hf", "vllm"], default="hf",
        help="engine of dev generation: hf (the seeded HF sampler on the training model) or vllm (a vLLM engine "
             "on each rank that receives the training weights first; the same answers in fp32; needs "
             "pip install -e '.[vllm]')")
    add("--eval-gen-repeat-times", type=int, default=3,
                   help="dev ROUGE-L is the mean over this many samplings (seeds SEED, SEED+1, ...)")


def _adakd_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("AdaKD (token-adaptive KD)")
    g.add_argument("--adakd", action="store_true", help="AdaKD token focusing and per-token temperatures")
    g.add_argument("--adakd-c", type=float, default=0.5,
                   help="IDTS strength c: token temperature τ_i = T·exp(−c·tanh(log(s_i / s_median))); 0: no IDTS")
    g.add_argument("--adakd-ema", type=float, default=0.99,
                   help="LATF: decay of the moving average of the per-token KD loss")
    g.add_argument("--adakd-eps", type=float, default=0.05,
                   help="LATF: relative band around the reference loss inside which the ratio r stays")
    g.add_argument("--adakd-delta", type=float, default=0.05,
                   help="LATF: r shrinks by (1 − δ) when the loss fell below the band, grows by (1 + δ) above it")
    g.add_argument("--adakd-warmup", type=float, default=0.05,
                   help="LATF warm-up (r = 1) as a fraction of the optimizer steps; its end sets the reference loss")
    g.add_argument("--adakd-min-ratio", type=float, default=0.1,
                   help="LATF: the floor of r, the fraction of response tokens that get a KD term")
    g.add_argument("--adakd-difficulty", choices=DIFFICULTIES, default="hellinger",
                   help="per-token difficulty score that ranks tokens (LATF) and sets temperatures (IDTS)")


def _onpolicy_args(parser: argparse.ArgumentParser) -> None:
    """On-policy KD (:mod:`todi.training.onpolicy`): what each step trains on, and how rollouts sample."""
    g = parser.add_argument_group("on-policy data (KD on the student's own samples)")
    g.add_argument("--data-mode", choices=DATA_MODES, default="fixed",
                   help="fixed: the dataset's responses; gkd: the student's own responses with probability "
                        "--student-gen-ratio (GKD); distillm: DistiLLM's adaptive schedule with a replay buffer")
    g.add_argument("--student-gen-ratio", type=float, default=0.5,
                   help="gkd: λ, the probability that a step trains on the student's sampled responses")
    g.add_argument("--seq-kd", action="store_true",
                   help="gkd: steps that do not sample the student train on the teacher's sampled responses")
    g.add_argument("--init-threshold", type=float, default=0.0,
                   help="distillm: the starting threshold τ (the share of steps off the dataset)")
    g.add_argument("--loss-eps", type=float, default=0.1,
                   help="distillm: τ grows by 0.1 when a dev loss exceeds the reference by this much")
    g.add_argument("--replay-capacity", type=int, default=1000,
                   help="distillm: sampled responses the replay buffer keeps (the oldest go first)")
    g.add_argument("--rollout-max-new-tokens", type=int, default=None,
                   help="new tokens a rollout may sample (default: --max-length minus --max-prompt-length; "
                        "a sequence never exceeds --max-length)")
    g.add_argument("--rollout-temperature", type=float, default=1.0, help="rollouts' sampling temperature")
    g.add_argument("--rollout-top-k", type=int, default=0, help="rollouts' top-k (0: the full vocabulary)")
    g.add_argument("--rollout-top-p", type=float, default=1.0, help="rollouts' nucleus (1.0: off)")
    _not_identity(g.add_argument(
        "--rollout-backend", choices=["hf", "vllm"], default="hf",
        help="engine of the student's rollouts: hf (the seeded HF sampler on the training model) or vllm (the "
             "vLLM engine colocated on each rank, shared with --dev-gen-backend vllm; the same samples in fp32 "
             "with --rollout-sync-interval 1; needs pip install -e '.[vllm]')"))
    g.add_argument("--rollout-sync-interval", type=int, default=1,
                   help="vllm rollouts: push the training weights into the engine when its weights are this many "
                        "optimizer steps old (1: at every generated step, the HF engine's samples)")
    _not_identity(g.add_argument(
        "--vllm-memory-share", type=float, default=COLOCATED_MEMORY_SHARE,
        help="the device memory share of the colocated vLLM engine (dev generation and rollouts); training "
             "keeps the rest"))


def _check_onpolicy(args: argparse.Namespace, fail) -> None:
    if args.rollout_max_new_tokens is None:
        args.rollout_max_new_tokens = args.max_length - args.max_prompt_length
    if not 0.0 < args.vllm_memory_share < 1.0:
        fail(f"--vllm-memory-share {args.vllm_memory_share}: must be in (0, 1)")
    if args.data_mode == "fixed":
        if args.rollout_backend != "hf" or args.rollout_sync_interval != 1:
            fail("--rollout-backend and --rollout-sync-interval apply to on-policy runs: add --data-mode gkd|distillm")
        return
    if args.rollout_sync_interval < 1:
        fail(f"--rollout-sync-interval {args.rollout_sync_interval}: must be at least 1")
    if args.rollout_sync_interval > 1 and args.rollout_backend != "vllm":
        fail(f"--rollout-sync-interval {args.rollout_sync_interval} needs --rollout-backend vllm: the HF engine "
             "samples the training weights themselves")
    if args.criterion != "various_divergence" or args.kd_rate == 0:
        fail(f"--data-mode {args.data_mode} trains by KD on sampled responses: it needs --criterion "
             "various_divergence with --kd-rate > 0")
    if args.teacher_model_path is None:
        fail(f"--data-mode {args.data_mode} needs --teacher-model-path: the teacher scores the sampled responses "
             "(a --teacher-cache only holds the dataset's)")
    if not 0.0 <= args.student_gen_ratio <= 1.0:
        fail(f"--student-gen-ratio {args.student_gen_ratio}: must be in [0, 1]")
    if args.rollout_max_new_tokens < 1:
        fail(f"--rollout-max-new-tokens {args.rollout_max_new_tokens}: the generation budget must be at least 1 token")
    if args.rollout_temperature <= 0 or not 0 < args.rollout_top_p <= 1 or args.rollout_top_k < 0:
        fail("--rollout-temperature must be > 0, --rollout-top-p in (0, 1], --rollout-top-k >= 0")
    if args.data_mode == "distillm":
        if not args.do_valid:
            fail("--data-mode distillm adapts to the dev loss: it needs --do-valid (and dev.jsonl in --data-dir)")
        if args.replay_capacity < 1 or not 0.0 <= args.init_threshold <= 1.0 or args.loss_eps < 0:
            fail("--replay-capacity must be >= 1, --init-threshold in [0, 1], --loss-eps >= 0")


def _deepspeed_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("DeepSpeed")
    _not_identity(g.add_argument("--deepspeed", action="store_true",
                   help="official flag; training always runs on DeepSpeed"))
    _not_identity(g.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", required=True,
                   help="DeepSpeed JSON (precision, ZeRO stage); batch size, accumulation and clipping come "
                        "from the command line"))


def _monitor_args(parser: argparse.ArgumentParser) -> None:
    """Live metrics (DeepSpeed's monitor, :mod:`todi.training.monitor`): where a run reports, not what it computes."""
    g = parser.add_argument_group("live metrics")
    _not_identity(g.add_argument(
        "--report-to", action="append", type=parse_backends, default=[], metavar="BACKEND[,BACKEND]",
        help=f"send the train/dev metrics to {', '.join(BACKENDS)} through DeepSpeed's monitor (rank 0 only); "
             "repeatable or a comma list; default: none (metrics.jsonl and the log only)"))
    _not_identity(g.add_argument("--report-dir", default=None,
                                 help="where tensorboard/, csv/ and wandb/ go (default: SAVE_DIR/monitor)"))
    _not_identity(g.add_argument("--wandb-project", default="todi",
                                 help="W&B project; offline (WANDB_MODE=offline) unless WANDB_API_KEY is set"))


def _plugin_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("plug-ins")
    _not_identity(g.add_argument(
        "--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
        help="a Python file or module imported before the flags are read, e.g. one that registers an objective "
             "(todi.objectives.register); repeatable"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillation.py",
        description="SFT and knowledge distillation (ToDi and the other divergences) on DeepSpeed.",
        allow_abbrev=False,
        formatter_class=DefaultsHelpFormatter,
    )
    for add in (_model_args, _runtime_args, _data_args, _hp_args, _generation_args, _adakd_args, _onpolicy_args,
                _deepspeed_args, _monitor_args, _plugin_args):
        add(parser)
    return parser


def run_identity(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict:
    """The settings a resumed run must share with the run that wrote its state: every flag not
    marked otherwise (:func:`_not_identity`, the generation group), with the objective parameters
    from the registry."""
    parser = parser or build_parser()
    chosen = get(args.kd_objective) if args.criterion == "various_divergence" else None
    mine = {_dest(p.flag) for p in chosen.params} if chosen is not None else set()
    others = {_dest(flag) for flag in objective_flags()} - mine  # unused: not part of what the run computes
    keys = [a.dest for a in parser._actions
            if a.dest != "help" and getattr(a, "run_identity", True) and a.dest not in others]
    return {k: getattr(args, k, None) for k in keys}


def _check_report_to(args: argparse.Namespace, fail) -> None:
    """Flatten ``--report-to`` (repeated, comma lists) and fail now, not mid-run, on a missing package."""
    groups = [[g] if isinstance(g, str) else g for g in args.report_to]  # already flat when checked twice
    args.report_to = list(dict.fromkeys(b for group in groups for b in group))
    for backend in args.report_to:
        hint = missing_package(backend)
        if hint is not None:
            fail(f"--report-to {backend} needs the {backend} package, which is not installed: {hint}")


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Cross-flag checks; raises ``SystemExit`` via argparse-style messages (returned for chaining)."""

    def fail(message: str):
        raise SystemExit(f"distillation.py: error: {message}")

    if not args.do_train:
        fail("--do-train is required (this entry point trains; evaluate with code/evaluate.py)")
    if args.num_epochs is None and args.total_iters is None:
        fail("give --num-epochs or --total-iters")
    for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_interval",
                 "save_interval", "eval_interval", "keep_best_n_checkpoints", "max_length", "max_prompt_length"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("num_epochs", "total_iters", "stop_after_iters"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.state_interval < 0 or args.warmup_iters < 0 or args.num_workers < 0:
        fail("--state-interval, --warmup-iters and --num-workers must be >= 0")
    if args.max_prompt_length >= args.max_length:
        fail(f"--max-prompt-length ({args.max_prompt_length}) must be < --max-length ({args.max_length})")
    if args.resume and args.no_resume:
        fail("--resume and --no-resume exclude each other")
    if not 0.0 <= args.kd_rate <= 1.0:
        fail(f"--kd-rate must be in [0, 1], got {args.kd_rate}")
    if args.criterion == "various_divergence":
        try:
            args.kd_objective = canonical_name(args.kd_objective)
        except ValueError as e:
            fail(f"--kd-objective: {e}")
        if args.teacher_model_path is None and args.teacher_cache is None:
            fail("--criterion various_divergence needs --teacher-model-path (or --teacher-cache)")
        if args.adakd and args.kd_rate == 0:
            fail("--adakd needs --kd-rate > 0 (it decides which tokens get a KD term)")
    else:
        if args.teacher_model_path is not None or args.teacher_peft_path is not None or args.teacher_cache is not None:
            fail("--criterion cross_entropy (SFT) uses no teacher; drop --teacher-model-path/--teacher-peft-path")
        if args.adakd:
            fail("--adakd needs --criterion various_divergence")
    _check_objective_params(args, fail)
    _check_onpolicy(args, fail)
    if args.fused_lm_head and (args.adakd or args.kd_impl == "reference"):
        fail("--fused-lm-head works with the memory-efficient kernels only: drop --adakd (it needs the student's "
             "logits) and --kd-impl reference")
    if args.teacher_peft_path is not None and args.teacher_model_path is None:
        fail("--teacher-peft-path needs --teacher-model-path")
    if args.eval_gen and not args.do_valid:
        fail("--eval-gen needs --do-valid (dev generation is part of the dev evaluation)")
    if args.eval_gen_repeat_times <= 0:
        fail("--eval-gen-repeat-times must be > 0")
    _check_report_to(args, fail)
    if args.local_rank is not None and "LOCAL_RANK" in os.environ and int(os.environ["LOCAL_RANK"]) != args.local_rank:
        fail(f"--local_rank {args.local_rank} disagrees with LOCAL_RANK={os.environ['LOCAL_RANK']}")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Load the ``--plugin`` modules first (they may register objectives, whose flags the parser
    then offers), then parse and check everything."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    try:
        load_plugins(known.plugin)
    except (ImportError, OSError, ValueError) as e:
        raise SystemExit(f"distillation.py: error: --plugin: {e}") from None
    return check_args(build_parser().parse_args(argv))
