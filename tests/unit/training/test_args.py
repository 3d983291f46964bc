"""``python code/distillation.py --help``: every flag explained, every default shown."""

from __future__ import annotations

import re
import subprocess
import sys

from _training import REPO

from todi.training.args import build_parser


def help_text() -> str:
    result = subprocess.run([sys.executable, str(REPO / "code/distillation.py"), "--help"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def flag_entries(text: str) -> dict[str, str]:
    """flag -> its help paragraph (argparse indents flags by 2 and help continuations by more)."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {flag: " ".join(entry.split()) for flag, entry in entries.items()}


def test_every_flag_has_a_help_text():
    undocumented = [a.option_strings for a in build_parser()._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_help_shows_the_defaults_users_asked_for():
    entries = flag_entries(help_text())
    for flag, default in (("--eval-batch-size", "32"), ("--adakd-c", "0.5"), ("--adakd-ema", "0.99"),
                          ("--adakd-eps", "0.05"), ("--adakd-delta", "0.05"), ("--adakd-min-ratio", "0.1"),
                          ("--gradient-accumulation-steps", "1"), ("--lr-decay-style", "noam"),
                          ("--kd-rate", "0.5"), ("--seed", "1234")):
        assert f"(default: {default})" in entries[flag], (flag, entries[flag])
    assert "required" in entries["--lr"]
    assert "(default: None)" not in " ".join(entries.values())
    # every flag with a value to show shows it, in words or as "(default: ...)"
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, []) and action.option_strings[0] != "-h":
            assert "default" in entries[action.option_strings[0]], action.option_strings[0]
