"""Plug-ins: user Python files or modules imported before the command line is read.

A plug-in typically registers an objective (:func:`todi.objectives.register`), whose parameters
then appear as flags of ``code/distillation.py``; the registry is the only thing it touches, so
no library file is edited. Every process of a run (every torchrun rank) loads the same plug-ins.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

__all__ = ["load_plugins"]

_LOADED: dict[str, object] = {}


def _where(exc: BaseException, path: Path) -> str:
    """``file:line`` of the innermost frame of the plug-in itself, if the error arose there."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def load_plugins(specs: list[str]) -> list[object]:
    """Import each ``spec`` (a ``.py`` path or a module name) once; returns the modules.

    Raises ImportError naming the plug-in (and its file and line) when it is missing or fails.
    """
    modules = []
    for spec in specs:
        if spec in _LOADED:
            modules.append(_LOADED[spec])
            continue
        path = Path(spec)
        if spec.endswith(".py") or path.is_file():
            if not path.is_file():
                raise ImportError(f"plug-in file {spec} not found")
            name = f"todi_plugin_{path.stem}_{len(_LOADED)}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as e:  # a user's file: report where it failed, not our stack
                sys.modules.pop(name, None)
                raise ImportError(f"plug-in {_where(e, path)}: {type(e).__name__}: {e}") from None
        else:
            try:
                module = importlib.import_module(spec)
            except ModuleNotFoundError as e:
                raise ImportError(f"plug-in module {spec!r} not found ({e})") from None
        _LOADED[spec] = module
        modules.append(module)
    return modules
