"""Every DeepSpeed config parses with the installed DeepSpeed; the CLI fills batch settings in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from todi.util import ds_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "deepspeed"
ALL = sorted(CONFIGS.glob("*.json"))


def test_the_full_set_and_the_official_names_exist():
    names = {p.name for p in ALL}
    for stage in range(4):
        for precision in ("bf16", "fp16", "fp32"):
            assert f"ds_config_zero{stage}_{precision}.json" in names
    assert {"ds_config_bf16.json", "ds_config.json", "ds_config_fp32.json"} <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_config_validates_with_deepspeed(path):
    config = ds_config.load_config(path)
    ds_config.validate(config)
    filled, _ = ds_config.fill_config(config, micro_batch_size=4, grad_accum=2, clip_grad=1.0, world_size=1)
    ds_config.validate(filled)
    stem = path.stem
    expected = {"ds_config": "fp16", "ds_config_bf16": "bf16", "ds_config_fp32": "fp32"}.get(stem, stem.rsplit("_", 1)[-1])
    assert ds_config.precision(config) == expected
    stage = int(stem.split("zero")[1][0]) if "zero" in stem else 1
    assert ds_config.zero_stage(config) == stage


def test_the_official_bf16_config_is_what_current_deepspeed_rejects():
    official = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 1},
                "bf16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 11, "loss_scale_window": 2000,
                         "hysteresis": 4}, "fp16": {"enabled": False}}
    with pytest.raises(Exception, match="loss_scale"):
        ds_config.validate(official)


def test_command_line_values_win_and_are_reported():
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 0.5,
              "bf16": {"enabled": True}}
    filled, changes = ds_config.fill_config(config, micro_batch_size=4, grad_accum=2, clip_grad=1.0, world_size=4)
    assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_accumulation_steps"] == 2
    assert filled["train_batch_size"] == 32 and filled["gradient_clipping"] == 1.0
    assert "gradient_clipping: 0.5 -> 1.0" in changes and config["gradient_clipping"] == 0.5


def test_bad_configs_are_explained(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "bf16": {"enabled": true},\n  "zero_optimization": {"stage": 1,}\n}')
    with pytest.raises(ValueError, match=r"bad.json:3: malformed JSON"):
        ds_config.load_config(bad)
    bad.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="remove the 'optimizer' section"):
        ds_config.load_config(bad)
    with pytest.raises(ValueError, match="both bf16 and fp16"):
        ds_config.precision({"bf16": {"enabled": True}, "fp16": {"enabled": True}})
    with pytest.raises(FileNotFoundError):
        ds_config.load_config(tmp_path / "missing.json")
