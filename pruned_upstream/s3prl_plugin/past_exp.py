"""``superb -e states-N.ckpt``: the ``Args`` and ``Config`` s3prl adopts from a checkpoint, checked first.

s3prl 0.4.18's ``run_downstream.py`` (``get_downstream_args``) resumes an
experiment by loading the checkpoint and taking its ``Args`` (all but
``mode``, ``evaluate_split``, ``override``, ``backend``, ``local_rank``,
``past_exp``, ``device``) and its whole ``Config``. Several config values are
then given to Python's ``eval()`` by the downstream code:

* ``modelrc.select`` (``asr``, ``speech_commands``, ``fluent_commands``,
  ``voxceleb1``, ``emotion`` ``expert.py``), ``model.select`` (``ctc/expert.py``),
  ``select`` / ``pooling`` inside the model configs (``downstream/model.py``),
  ``module``, ``agg_module``, ``utter_module``, ``ObjectiveLoss``
  (``sv_voxceleb1``, ``voxceleb1/model.py``), ``pooling_name``
  (``fluent_commands/model.py``), ``model_type`` (``emotion/model.py``),
  each name of ``metric`` (``ctc/expert.py``);
* ``runner.eval_dataloaders`` and ``runner.train_dataloader`` are pasted into
  ``eval(f'self.get_{mode}_dataloader')`` (``voxceleb1``, ``fluent_commands``,
  ``emotion`` ``expert.py``);
* ``decoder_args.unk_weight`` (``asr/expert.py``, a string such as ``-math.inf``).

That is s3prl's design; ``-e`` is also our documented resume door, so a
checkpoint someone else made could run code. :func:`check_past_exp` refuses,
in one line and before s3prl opens the file, a checkpoint whose ``Args`` or
``Config`` holds anything but plain values, a value at one of the places
above that is not a name s3prl's downstream (or ``torch.nn``) defines, a
split name that is not ``[A-Za-z0-9_-]+``, an upstream ``s3prl.hub`` does not
have, a downstream s3prl does not ship, or ``hub`` other than ``torch`` (the
``huggingface`` hub logs in with the environment's credentials).
docs/s3prl.md ("Resuming from a checkpoint") has the list and the limits.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

from ..errors import CheckpointError
from ..safe_load import torch_load

EVAL_NAME_KEYS = frozenset({"select", "module", "agg_module", "utter_module", "ObjectiveLoss", "model_type",
                            "pooling", "pooling_name"})
SPLIT = re.compile(r"[A-Za-z0-9_-]+")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
NUMBER = re.compile(r"-?math\.inf|[-+]?(inf|[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?)")
PLAIN = (str, int, float, bool, type(None))


class PastExpError(RuntimeError):
    """A checkpoint whose Args or Config s3prl would adopt and must not."""


def _key(key: str) -> str:
    return key if NAME.fullmatch(key) else repr(key)  # a message stays one line


def _plain(value, where: str) -> None:
    """Only str, numbers, bool, None, lists/tuples and str-keyed dicts of them (no tensors, no objects)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PastExpError(f"{where}: key {key!r} is not a string")
            _plain(item, f"{where}.{_key(key)}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
    elif not isinstance(value, PLAIN):
        raise PastExpError(f"{where}: a {type(value).__name__}, not a plain value")


def defined_names(downstream: str) -> frozenset[str]:
    """Classes and functions s3prl's ``downstream`` package (and ``downstream/model.py``) define, with torch.nn's."""
    import torch.nn

    importlib.import_module(f"s3prl.downstream.{downstream}.expert")
    importlib.import_module("s3prl.downstream.model")
    prefix = f"s3prl.downstream.{downstream}."
    modules = [m for name, m in list(sys.modules.items())
               if m is not None and (name.startswith(prefix) or name == "s3prl.downstream.model")]
    names = {n for n in dir(torch.nn) if not n.startswith("_")}
    for module in modules:
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                    getattr(obj, "__module__", "").startswith("s3prl."):
                names.add(name)
    return frozenset(names)


def _config_problems(config: dict, names: frozenset[str]) -> list[str]:
    problems = []
    runner = config.get("runner") or {}
    splits = runner.get("eval_dataloaders") or []
    splits = [*splits] if isinstance(splits, (list, tuple)) else [splits]
    if "train_dataloader" in runner:
        splits.append(runner["train_dataloader"])
    problems += [f"runner split {s!r} is not [A-Za-z0-9_-]+" for s in splits
                 if not (isinstance(s, str) and SPLIT.fullmatch(s))]

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{_key(key)}"
                if key in EVAL_NAME_KEYS and isinstance(value, str) and not (NAME.fullmatch(value) and value in names):
                    problems.append(f"{here} = {value!r} is not a name s3prl's downstream defines")
                elif key == "metric" and isinstance(value, (list, tuple, str)):
                    for m in [value] if isinstance(value, str) else value:
                        if not (isinstance(m, str) and NAME.fullmatch(m) and m in names):
                            problems.append(f"{here} names {m!r}, not a metric s3prl's downstream defines")
                elif key == "unk_weight" and isinstance(value, str) and not NUMBER.fullmatch(value):
                    problems.append(f"{here} = {value!r} is not a number")
                else:
                    walk(value, here)
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(config.get("downstream_expert") or {}, "downstream_expert")
    return problems


def check_args_and_config(args, config, s3prl_root: Path) -> None:
    """What s3prl would adopt from a checkpoint: raises PastExpError naming the first problems."""
    import s3prl.hub as hub

    namespace = type(args).__module__ == "argparse" and type(args).__name__ == "Namespace"  # (no argparse here)
    if not (namespace or isinstance(args, dict)) or not isinstance(config, dict):
        raise PastExpError("its Args is not an argparse.Namespace or its Config not a dict")
    fields = vars(args) if namespace else args  # our reader gives a Namespace's fields as a dict
    _plain(fields, "Args")
    _plain(config, "Config")
    upstream, downstream = fields.get("upstream"), fields.get("downstream")
    if not (isinstance(upstream, str) and NAME.fullmatch(upstream) and callable(getattr(hub, upstream, None))):
        raise PastExpError(f"Args.upstream {upstream!r} is not an upstream s3prl.hub has")
    if not (isinstance(downstream, str) and NAME.fullmatch(downstream)
            and (s3prl_root / "downstream" / downstream / "expert.py").is_file()):
        raise PastExpError(f"Args.downstream {downstream!r} is not a downstream s3prl ships")
    if fields.get("hub", "torch") != "torch":
        raise PastExpError(f"Args.hub {fields.get('hub')!r}: only 'torch' (the huggingface hub logs in)")
    try:
        names = defined_names(downstream)
    except Exception as exc:  # s3prl would fail importing it too
        raise PastExpError(f"s3prl.downstream.{downstream}.expert cannot be imported: {exc}") from None
    problems = _config_problems(config, names)
    if problems:
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        raise PastExpError("; ".join(problems[:2]) + more)


def check_past_exp(ckpt: str | Path) -> None:
    """Refuse ``ckpt`` (PastExpError, one line) when the Args/Config s3prl would adopt from it fail the checks."""
    import s3prl

    path = Path(ckpt)
    try:  # our reader: no torch.load, so no TorchScript, tar extraction or code the file names
        state = torch_load(path)
    except CheckpointError as exc:
        raise PastExpError(f"-e {exc}") from None
    if not isinstance(state, dict) or "Args" not in state or "Config" not in state:
        raise PastExpError(f"-e {path}: not an s3prl checkpoint (no Args and Config)")
    try:
        check_args_and_config(state["Args"], state["Config"], Path(s3prl.__file__).resolve().parent)
    except PastExpError as exc:
        raise PastExpError(f"-e {path}: refused before s3prl adopts its Args and Config "
                           f"(s3prl eval()s some of them; docs/s3prl.md): {exc}") from None
