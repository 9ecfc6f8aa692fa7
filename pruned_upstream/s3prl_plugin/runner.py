"""``pruned-upstream superb``: s3prl's own downstream runner, in-process.

s3prl resolves ``-u NAME`` with ``getattr(s3prl.hub, NAME)`` (in
``run_downstream.py`` and ``downstream/runner.py``), so adding our entries to
``s3prl.hub`` and then calling ``s3prl.run_downstream.main()`` with
``sys.argv`` set runs SUPERB with our upstream and no change to s3prl's files.
Around that call this module smooths the rough edges of s3prl 0.4.18 on
torch >= 2.6 (see docs/s3prl.md):

* ``argparse.Namespace`` is allow-listed for ``torch.load``'s default
  ``weights_only=True`` (checkpoints store the runner's ``Args``);
* ``--device cpu`` is added when no GPU is present (s3prl defaults to cuda);
* ``-c`` defaults to our ``downstream_configs/<task>.yaml`` (the PyPI sdist
  ships no task configs);
* s3prl expects to run from its package directory (``./downstream/...`` paths
  in its configs): the user's paths are made absolute, then the run happens
  there, and the working directory is restored;
* stdout and stderr are also written to ``<expdir>/stdout.log`` (PR, ASR, SF,
  ASV and SD print their test metrics only there), progress bars collapsed to
  their last state;
* the process-wide state s3prl changes (``builtins.isinstance``,
  ``sys.argv``, logging streams) is restored afterwards;
* the caches s3prl keeps beside its dataset code (SID's file lists, ASV's
  lengths) are moved into the experiment directory for the run, in process:
  nothing is written under s3prl's package (caches.py, docs/tasks/caches.md);
* without a GPU, ``Tensor.cuda()`` returns the tensor inside the run (cuda_shim.py:
  the ASV downstream calls it whatever ``--device`` says).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import logging
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pruned_upstream.s3prl_plugin.caches import experiment_of, redirect_caches
from pruned_upstream.s3prl_plugin.cuda_shim import tensor_cuda_stays_on_cpu
from pruned_upstream.s3prl_plugin.output_tee import LogSink, TeeStream
from pruned_upstream.s3prl_plugin.past_exp import PastExpError, check_past_exp
from pruned_upstream.s3prl_plugin.runner_args import (PreflightError, config_for_downstream, prepare_argv,
                                                      resolve_and_check, resolve_past_exp, scan_options,
                                                      states_by_step)

__all__ = ["run_superb", "register_upstreams", "hub_entries", "prepare_argv", "config_for_downstream", "LogSink",
           "TeeStream", "LOG_NAME"]

HUBCONF_MODULE = "pruned_upstream.s3prl_plugin.hubconf"
LOG_NAME = "stdout.log"
PROG = "run_downstream.py"
_REGISTERED: dict[str, Callable] = {}


# --------------------------------------------------------------- registration
def hub_entries() -> dict[str, Callable]:
    """Our upstream entries: every public ``pruned_wavlm*`` callable of our hubconf."""
    hubconf = importlib.import_module(HUBCONF_MODULE)
    names = [n for n in dir(hubconf) if n.startswith("pruned_wavlm") and callable(getattr(hubconf, n))]
    if not names:
        raise ImportError(f"{HUBCONF_MODULE} defines no pruned_wavlm* entry")
    return {name: getattr(hubconf, name) for name in names}


def register_upstreams(entries: dict[str, Callable] | None = None) -> dict[str, Callable]:
    """Add ``entries`` (default: :func:`hub_entries`) as attributes of ``s3prl.hub``.

    Replacing one of s3prl's own upstreams is refused; our earlier
    registrations may be replaced. Returns the entries registered.
    """
    import s3prl.hub as hub

    entries = hub_entries() if entries is None else dict(entries)
    for name, entry in entries.items():
        existing = getattr(hub, name, None)
        if existing is not None and existing is not entry and name not in _REGISTERED:
            raise ValueError(f"s3prl.hub already has {name!r} ({existing!r}); refusing to replace it")
        setattr(hub, name, entry)
        _REGISTERED[name] = entry
    return entries


# --------------------------------------------------------------- the runner
@contextlib.contextmanager
def _s3prl_process_state(argv: list[str], log: LogSink):
    """sys.argv, tee'd streams, cwd = s3prl's package; all restored on exit."""
    import s3prl

    saved = sys.argv, sys.stdout, sys.stderr, builtins.isinstance, os.getcwd()
    sys.argv = [PROG, *argv]
    sys.stdout = TeeStream(saved[1], log, "stdout")
    sys.stderr = TeeStream(saved[2], log, "stderr")
    try:
        os.chdir(Path(s3prl.__file__).resolve().parent)
        yield
    finally:
        tees = {id(sys.stdout): saved[1], id(sys.stderr): saved[2]}
        for handler in logging.root.handlers:  # s3prl's logging.basicConfig may hold our tee
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in tees:
                handler.setStream(tees[id(handler.stream)])
        sys.argv, sys.stdout, sys.stderr, builtins.isinstance = saved[:4]  # s3prl's hack_isinstance wraps it
        os.chdir(saved[4])
        log.close()


@contextlib.contextmanager
def _report_expdir(module, on_expdir: Callable[[Path], None]):
    """Call ``on_expdir`` with the expdir s3prl settles on (after -e, -a and -o); for the rest of the
    run, the caches s3prl keeps beside its dataset code live in the experiment directory (caches.py)."""
    original = module.get_downstream_args
    with contextlib.ExitStack() as stack:
        def wrapped():
            args, config, backup_files = original()
            on_expdir(Path(args.expdir).resolve())
            stack.enter_context(redirect_caches(args.downstream, experiment_of(args), config,
                                                Path(module.__file__).resolve().parent))
            return args, config, backup_files

        module.get_downstream_args = wrapped
        try:
            yield
        finally:
            module.get_downstream_args = original


def adopted_checkpoint(argv: list[str]) -> Path | None:
    """The checkpoint whose Args and Config s3prl will adopt: ``-e FILE`` (a directory was resolved to its
    newest complete one), or with ``-a`` the newest ``states-N.ckpt`` of ``-p`` (s3prl's own pick)."""
    opts = scan_options(argv)
    if "past_exp" in opts:
        path = Path(opts["past_exp"].value)
        return path if path.is_file() else None  # a directory without states: s3prl stops on its own
    head = argv[:argv.index("--")] if "--" in argv else argv
    if any(a in ("-a", "--auto_resume") for a in head) and "expdir" in opts and Path(opts["expdir"].value).is_dir():
        states = states_by_step(Path(opts["expdir"].value))
        return states[-1] if states else None
    return None


def exit_code(code) -> int:
    """The process exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_superb(argv: list[str], upstreams: dict[str, Callable] | None = None) -> int:
    """Run ``s3prl.run_downstream`` with ``argv`` in this process; returns its exit status.

    ``upstreams`` is passed to :func:`register_upstreams` (default: our
    hubconf's entries). A missing default config gives 2, as s3prl's own
    usage errors do; an exception inside s3prl is printed (and logged) and
    gives 1.
    """
    import torch

    torch.serialization.add_safe_globals([argparse.Namespace])  # s3prl ckpts store Args
    register_upstreams(upstreams)
    try:
        argv = prepare_argv(argv, Path.cwd(), torch.cuda.is_available())
    except (ValueError, FileNotFoundError) as exc:  # no default -c: a usage error, as argparse's
        print(f"pruned-upstream superb: error: {exc}", file=sys.stderr)
        return 2
    try:
        argv = resolve_past_exp(argv)
        adopted = adopted_checkpoint(argv)
        if adopted is not None:  # s3prl takes its Args and Config and eval()s some values: checked first
            check_past_exp(adopted)
        argv = resolve_and_check(argv)
    except (PreflightError, PastExpError) as exc:
        print(f"pruned-upstream superb: {exc}", file=sys.stderr)
        return 2
    import s3prl.run_downstream as run_downstream

    log = LogSink(f"### pruned-upstream superb {shlex.join(argv)}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    with _s3prl_process_state(argv, log), _report_expdir(run_downstream, lambda d: log.open(d / LOG_NAME)), \
            tensor_cuda_stays_on_cpu():  # s3prl's ASV calls .cuda() whatever --device says
        try:
            run_downstream.main()
            return 0
        except SystemExit as exc:
            return exit_code(exc.code)
        except Exception:
            traceback.print_exc()
            return 1
