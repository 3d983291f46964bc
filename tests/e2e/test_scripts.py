"""The shell scripts: overridable settings, official names, failures that explain themselves, the benchmark."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from _training import subprocess_env

REPO = Path(__file__).resolve().parents[2]
# every family's training scripts (the teacher-cache scripts launch code/cache_teacher.py, not training)
TRAINING = [p for family in ("gpt2", "tinyllama", "qwen2.5", "olmo2", "gemma3")
            for p in sorted((REPO / "scripts" / family).glob("*.sh")) if not p.name.startswith("cache_teacher")]
ALL = TRAINING + [REPO / "scripts/demo/run_demo.sh", REPO / "scripts/bench/bench_epoch.sh",
                  REPO / "scripts/download_models.sh"]


def test_official_script_names_exist():
    names = {f"{p.parent.name}/{p.name}" for p in TRAINING}
    assert {"gpt2/sft_gpt2_base.sh", "gpt2/vanilla_kd_gpt2_base.sh", "gpt2/sft_teacher_gpt2_xlarge.sh",
            "tinyllama/sft_teacher_llama2.sh", "tinyllama/sft_tinyllama.sh",
            "tinyllama/vanilla_kd_tinyllama.sh"} <= names


def settings(script: Path) -> list[str]:
    """The assignment lines of the settings block: from the first assignment to the first blank line;
    a family script that sources another training script (the TinyLLaMA recipe) adds its settings."""
    lines = []
    text = script.read_text()
    for line in text.splitlines():
        if re.match(r"^[A-Z_]+=", line):
            lines.append(line)
        elif lines and not line.strip():
            break
    recipe = re.search(r'^source "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/((?:\.\./)?[\w/.]+\.sh)"$', text, re.M)
    if recipe and "launch" not in recipe.group(1):
        own = {line.split("=", 1)[0] for line in lines}
        lines += [line for line in settings((script.parent / recipe.group(1)).resolve()) if line.split("=", 1)[0] not in own]
    return lines


@pytest.mark.parametrize("script", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_setting_is_overridable(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)
    lines = settings(script)
    assert lines, script
    for line in lines:
        name = line.split("=", 1)[0]
        if name == "GPUS":  # an explicitly empty GPUS means "CPU"
            assert re.match(r"^GPUS=\$\{GPUS-[^}]*\}", line), line
        else:
            assert line.startswith(f"{name}=${{{name}:-"), line


def test_training_scripts_take_the_issue_variables():
    wanted = ["BASE_PATH", "CKPT_PATH", "DATA_DIR", "SAVE_PATH", "GPUS", "NPROC", "EPOCH", "BATCH_SIZE", "GRAD_ACC",
              "LR", "EVAL_BATCH_SIZE", "MAX_LENGTH", "PRECISION", "SEED"]
    for script in TRAINING:
        names = {line.split("=", 1)[0] for line in settings(script)}
        missing = set(wanted) - names
        kd = not script.name.startswith("sft_")
        if kd:
            missing |= {"KD_OBJ", "TEACHER_MODEL_PATH"} - names
        if script.name == "vanilla_kd_tinyllama.sh":
            missing |= {"TEACHER_PEFT_PATH"} - names
        assert not missing, (script.name, missing)


def test_paper_defaults():
    text = (REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh").read_text()
    for setting in ("LR=${LR:-0.0005}", "EPOCH=${EPOCH:-20}", "BATCH_SIZE=${BATCH_SIZE:-4}", "GRAD_ACC=${GRAD_ACC:-2}",
                    "KD_RATE=${KD_RATE:-0.5}", "KD_TEMP=${KD_TEMP:-2.0}", "MAX_LENGTH=${MAX_LENGTH:-512}",
                    "SEED=${SEED:-10}", "SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}", "GPUS=${GPUS-0,1,2,3}"):
        assert setting in text, setting
    tiny = (REPO / "scripts/tinyllama/vanilla_kd_tinyllama.sh").read_text()
    for setting in ("LR=${LR:-0.001}", "EPOCH=${EPOCH:-10}", "LORA_RANK=${LORA_RANK:-256}", "LORA_ALPHA=${LORA_ALPHA:-8}",
                    "LORA_DROPOUT=${LORA_DROPOUT:-0.1}", '--teacher-peft-path ${TEACHER_PEFT_PATH}', "--peft lora"):
        assert setting in tiny, setting


@pytest.mark.parametrize("script,variable", [("gpt2/vanilla_kd_gpt2_base.sh", "TEACHER_MODEL_PATH"),
                                             ("tinyllama/vanilla_kd_tinyllama.sh", "TEACHER_PEFT_PATH")])
def test_kd_scripts_ask_for_the_teacher(script, variable, tmp_path):
    env = {k: v for k, v in subprocess_env().items() if k not in ("TEACHER_MODEL_PATH", "TEACHER_PEFT_PATH")}
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], env={**env, "SAVE_PATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"set {variable}" in result.stderr


@pytest.mark.slow
def test_benchmark_runs_on_cpu(shared_dir, tmp_path):
    env = {**subprocess_env(), "GPUS": "", "STUDENT_CONFIG": str(shared_dir / "model_hub/gpt2/gpt2-base"),
           "STUDENT_OVERRIDES": "n_layer=1,n_embd=32,n_head=2", "TEACHER_OVERRIDES": "n_layer=1,n_embd=48,n_head=2",
           "DATA": str(shared_dir / "data/dolly/train.jsonl"), "STEPS": "1", "WARMUP": "1", "BATCH_SIZE": "2",
           "MAX_LENGTH": "96", "MAX_PROMPT_LENGTH": "64", "OUT_DIR": str(tmp_path), "MODES": "official-style default"}
    result = subprocess.run(["bash", str(REPO / "scripts/bench/bench_epoch.sh")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = re.findall(r"^\| todi (official-style|default) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", result.stdout,
                      re.M)
    assert [r[0] for r in rows] == ["official-style", "default"]
    assert all(int(r[1]) == 1 and float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    assert (tmp_path / "bench.md").is_file() and "speed-up vs todi official-style" in result.stdout


# ---------------------------------------------------------------------------------------------
# Objective parameters and plug-ins: the KD scripts take any registered objective and pass only
# the flags whose variables are set (a parameter of another objective is an error of the trainer).
# ---------------------------------------------------------------------------------------------

KD_SCRIPTS = ["gpt2/vanilla_kd_gpt2_base.sh", "tinyllama/vanilla_kd_tinyllama.sh"]
SFT_SCRIPTS = [p for p in TRAINING if p.name.startswith("sft_")]
# variable → flag, as scripts/train_launch.sh maps them
OBJECTIVE_VARIABLES = {"TODI_BETA": "--todi-beta", "SKEW_LAMBDA": "--skew-lambda",
                       "ADAPTIVE_KL_ALPHA": "--adaptive-kl-alpha", "GJSD_BETA": "--gjsd-beta",
                       "AB_ALPHA": "--ab-alpha", "AB_BETA": "--ab-beta"}
ALL_FLAGS = set(OBJECTIVE_VARIABLES.values())


def launched(script: str | Path, tmp_path: Path, **variables: str) -> list[str]:
    """The torchrun command line a training script launches (a stand-in torchrun prints it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "torchrun"
    fake.write_text('#!/bin/sh\necho "LAUNCHED $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in subprocess_env().items() if k not in OBJECTIVE_VARIABLES
           and k not in ("KD_OBJ", "OBJ_ARGS", "OBJ_TAG", "PLUGINS", "SAVE_PATH", "CONFIG", "SETTING")}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "GPUS": "", "MASTER_PORT": "29999",
                "TEACHER_MODEL_PATH": "/teacher", "TEACHER_PEFT_PATH": "/adapter", "BASE_PATH": str(tmp_path),
                **variables})
    script = REPO / "scripts" / script
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("LAUNCHED ")]
    return line.split()[1:]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_train_launch_maps_every_builtin_parameter_flag():
    """Every flag of a built-in objective has its variable, documented in both KD scripts."""
    from todi.objectives import all_objectives

    builtin = {p.flag for o in all_objectives() if o.terms.__module__ == "todi.objectives.builtin"
               for p in o.params if p.flag}
    assert builtin == ALL_FLAGS
    launch = (REPO / "scripts/train_launch.sh").read_text()
    for variable, flag in OBJECTIVE_VARIABLES.items():
        assert f"{variable}:{flag}" in launch, variable
    for script in KD_SCRIPTS:
        names = {line.split("=", 1)[0] for line in settings(REPO / "scripts" / script)}
        assert set(OBJECTIVE_VARIABLES) | {"KD_OBJ", "OBJ_ARGS", "PLUGINS", "OBJ_TAG"} <= names, script
        for variable in OBJECTIVE_VARIABLES:  # empty: the registry default applies (no flag)
            assert f"{variable}=${{{variable}:-}} " in (REPO / "scripts" / script).read_text(), (script, variable)


@pytest.mark.parametrize("script", KD_SCRIPTS)
def test_kd_scripts_pass_no_parameter_flag_by_default(script, tmp_path):
    argv = launched(script, tmp_path)
    assert flag_values(argv, "--kd-objective") == ["forward_kl"]
    assert not ALL_FLAGS & set(argv) and "--plugin" not in argv


@pytest.mark.parametrize("script", KD_SCRIPTS)
@pytest.mark.parametrize("variables,flags,tag", [
    ({"KD_OBJ": "generalized_jsd", "GJSD_BETA": "0.3"}, {"--gjsd-beta": "0.3"}, "generalized_jsd-gjsd^beta=0.3-"),
    ({"KD_OBJ": "abkd", "AB_ALPHA": "0.5", "AB_BETA": "0.1"}, {"--ab-alpha": "0.5", "--ab-beta": "0.1"},
     "abkd-ab^alpha=0.5-ab^beta=0.1-"),
    ({"KD_OBJ": "ToDi", "TODI_BETA": "2.0"}, {"--todi-beta": "2.0"}, "ToDi-todi^beta=2.0-"),
    ({"KD_OBJ": "srkl", "SKEW_LAMBDA": "0.3"}, {"--skew-lambda": "0.3"}, "srkl-skew^lambda=0.3-"),
    ({"KD_OBJ": "akl", "ADAPTIVE_KL_ALPHA": "0.2"}, {"--adaptive-kl-alpha": "0.2"}, "akl-adaptive^kl^alpha=0.2-"),
    ({"KD_OBJ": "gkd", "GJSD_BETA": ""}, {}, "gkd-"),  # empty: the registry default, no flag
], ids=["gjsd", "ab", "todi", "skew", "akl", "empty"])
def test_kd_scripts_pass_only_the_parameters_set(script, variables, flags, tag, tmp_path):
    argv = launched(script, tmp_path, **variables)
    assert flag_values(argv, "--kd-objective") == [variables["KD_OBJ"]]
    for flag in ALL_FLAGS:
        assert flag_values(argv, flag) == ([flags[flag]] if flag in flags else []), flag
    (save_dir,) = flag_values(argv, "--save-dir")
    assert f"__{tag}" in Path(save_dir).name and save_dir.startswith(str(tmp_path / "outputs"))


@pytest.mark.parametrize("script", KD_SCRIPTS)
def test_kd_scripts_take_plugins_and_extra_objective_flags(script, tmp_path):
    argv = launched(script, tmp_path, KD_OBJ="scaled_fkl", PLUGINS="/p/one.py my.module",
                    OBJ_ARGS="--scaled-gamma 2  --scaled-offset=-0.5")
    assert flag_values(argv, "--plugin") == ["/p/one.py", "my.module"]
    assert flag_values(argv, "--scaled-gamma") == ["2"] and "--scaled-offset=-0.5" in argv
    (save_dir,) = flag_values(argv, "--save-dir")
    assert "__scaled_fkl-scaled^gamma=2-scaled^offset=-0.5-" in Path(save_dir).name


# ---------------------------------------------------------------------------------------------
# Run folders: runs differing in seed, teacher, teacher source (live / cache), data set or lengths
# never share one; the official name's fields come first, in their order (results.method_name reads them).
# ---------------------------------------------------------------------------------------------

NAME_SCRIPTS = ["gpt2/sft_gpt2_base.sh", "tinyllama/sft_tinyllama.sh", *KD_SCRIPTS]
# one change at a time, each of which must give another folder
RUN_CHANGES = {"SEED": "11", "DATA_DIR": "/data/alpaca", "MAX_LENGTH": "1024", "MAX_PROMPT_LENGTH": "128"}
KD_RUN_CHANGES = {"TEACHER_MODEL_PATH": "/other-teacher", "TEACHER_CACHE": "/cache/teacher-dolly-k64-T2.0"}


def save_dir_of(script: str, tmp_path: Path, **variables: str) -> Path:
    (save_dir,) = flag_values(launched(script, tmp_path, **variables), "--save-dir")
    return Path(save_dir)


@pytest.mark.parametrize("script", NAME_SCRIPTS)
def test_runs_differing_in_seed_teacher_data_or_lengths_get_folders_of_their_own(script, tmp_path):
    from todi.evaluation.results import method_name

    changes = dict(RUN_CHANGES)
    if "vanilla_kd" in script:
        changes.update(KD_RUN_CHANGES)
    if script.startswith("tinyllama/vanilla_kd"):
        changes["TEACHER_PEFT_PATH"] = "/other-adapter"
    base = save_dir_of(script, tmp_path)
    folders = {name: save_dir_of(script, tmp_path, **{name: value}) for name, value in changes.items()}
    assert len({base, *folders.values()}) == len(changes) + 1, folders
    for folder in folders.values():
        assert folder.parent == base.parent
        assert method_name(folder / "epoch1_step1") == method_name(base / "epoch1_step1") is not None
    assert base.name.endswith("__seed=10__data=dolly__len=512-256")
    assert folders["SEED"].name.endswith("__seed=11__data=dolly__len=512-256")
    assert folders["DATA_DIR"].name.endswith("__data=alpaca__len=512-256")


@pytest.mark.parametrize("script", KD_SCRIPTS)
def test_kd_run_folders_name_the_actual_teacher_and_a_cache(script, tmp_path):
    adapter = "+adapter" if script.startswith("tinyllama") else ""  # launched() sets /teacher and /adapter
    live = save_dir_of(script, tmp_path).name
    assert f"__teacher=teacher{adapter}__kd^rate=" in live and not live.endswith("__cache")
    cached = save_dir_of(script, tmp_path, TEACHER_CACHE="/cache/teacher-dolly-k64-T2.0").name
    assert "__teacher=teacher-dolly-k64-T2.0__kd^rate=" in cached and cached.endswith("__len=512-256__cache")


def test_a_run_name_past_the_file_system_limit_stays_one_folder_per_run(tmp_path):
    """AdaKD + a LoRA teacher whose adapter is a checkpoint: over 255 bytes; start and end around a checksum."""
    adapter = "/runs/epoch10_step1071_loss2.1235_rougel24.5679"
    names = [save_dir_of("tinyllama/vanilla_kd_tinyllama.sh", tmp_path, ADAKD="1", TEACHER_PEFT_PATH=adapter,
                         SEED=seed).name for seed in ("10", "11")]
    assert names[0] != names[1] and all(len(n.encode()) == 255 for n in names)
    assert names[0].startswith("criterion=various_divergence__forward_kl-lora-") and names[0].endswith("len=512-256")


@pytest.mark.parametrize("script", SFT_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sft_scripts_take_plugins_but_no_objective_parameters(script, tmp_path):
    argv = launched(script, tmp_path, TODI_BETA="2.0", OBJ_ARGS="--scaled-gamma 2", PLUGINS="one.py")
    assert flag_values(argv, "--plugin") == ["one.py"]
    assert "--kd-objective" not in argv and "--todi-beta" not in argv and "--scaled-gamma" not in argv


@pytest.fixture(scope="module")
def tiny_kd(shared_dir, tmp_path_factory):
    from _training import make_dolly, make_gpt2_pair

    root = tmp_path_factory.mktemp("kd_script")
    student, teacher = make_gpt2_pair(shared_dir, root / "models")
    return student, teacher, make_dolly(shared_dir, root / "dolly", n_train=4, n_dev=2)


def run_kd_script(tiny_kd, save_path: Path, **variables: str) -> dict:
    """One optimizer step of scripts/gpt2/vanilla_kd_gpt2_base.sh on the tiny models; its args.json."""
    from _training import read_metrics

    student, teacher, data = tiny_kd
    env = {k: v for k, v in subprocess_env().items()
           if k not in OBJECTIVE_VARIABLES and k not in ("OBJ_ARGS", "OBJ_TAG", "PLUGINS")}
    env.update({"GPUS": "", "NPROC": "1", "CKPT_PATH": str(student), "TEACHER_MODEL_PATH": str(teacher),
                "DATA_DIR": str(data), "SAVE_PATH": str(save_path), "EPOCH": "1", "BATCH_SIZE": "2", "GRAD_ACC": "2",
                "MAX_LENGTH": "56", "MAX_PROMPT_LENGTH": "48", "EVAL_BATCH_SIZE": "2", "EVAL_GEN_REPEAT": "1",
                "LOG_INTERVAL": "1", "DEV_NUM": "2", "OMP_NUM_THREADS": "1", **variables})
    result = subprocess.run(["bash", str(REPO / "scripts/gpt2/vanilla_kd_gpt2_base.sh")], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = read_metrics(save_path)
    assert [r["step"] for r in steps] == [1] and all(v == v for v in steps[0].values() if isinstance(v, float))
    return json.loads((save_path / "args.json").read_text())


@pytest.mark.slow
def test_kd_script_trains_with_the_generalized_jsd(tiny_kd, tmp_path):
    args = run_kd_script(tiny_kd, tmp_path / "run", KD_OBJ="gjsd", GJSD_BETA="0.3")
    assert args["kd_objective"] == "generalized_jsd" and args["gjsd_beta"] == 0.3
    assert args.get("todi_beta") is None and args.get("ab_alpha") is None


PLUGIN = '''
from todi.objectives import Objective, Param, register


def scaled_fkl_terms(s, t, keep=None, *, gamma):
    """gamma * KL(p || q) per entry."""
    return gamma * t.exp() * (t - s)


register(Objective("scaled_fkl", scaled_fkl_terms, "gamma * KL(p || q)", aliases=("sfkl_scaled",),
                   params=(Param("gamma", 1.0, low=0.0, flag="--scaled-gamma", help="the scale"),)))
'''


@pytest.mark.slow
def test_kd_script_trains_with_a_plugin_objective(tiny_kd, tmp_path):
    plugin = tmp_path / "scaled_fkl_plugin.py"
    plugin.write_text(PLUGIN)
    args = run_kd_script(tiny_kd, tmp_path / "run", PLUGINS=str(plugin), KD_OBJ="scaled_fkl",
                         OBJ_ARGS="--scaled-gamma 2")
    assert args["kd_objective"] == "scaled_fkl" and args["scaled_gamma"] == 2.0
    assert args["plugin"] == [str(plugin)]
