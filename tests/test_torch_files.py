"""Trusted torch files through our reader (torch_files.py): read exactly as torch.load and Python's
pickle read them (every dtype, views, protocols 2 to 5, zip and legacy), and no file-format module
calls a loader that runs code. The hostile side is tests/test_pickle_attacks.py."""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from test_pickle_attacks import legacy_file, zip_file

from pruned_upstream.torch_files import read_torch_file


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
                and torch.equal(a, b))
    if isinstance(a, (dict, list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return False
        pairs = zip(a.items(), b.items()) if isinstance(a, dict) else zip(a, b)
        return all(_same(x, y) for x, y in pairs)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("legacy", [False, True])
def test_plain_data_reads_as_torch_load_reads_it(tmp_path, protocol, legacy):
    from collections import OrderedDict

    base = torch.arange(12.0).reshape(3, 4)
    tensors = {str(dtype): (torch.arange(6) % 2).to(dtype) for dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
        torch.uint8, torch.bool)}
    tensors.update(transposed=base.t(), every_other=torch.arange(10.0)[::2], scalar=torch.tensor(2.5),
                   empty=torch.zeros(0, 3), column=torch.arange(8.0).reshape(4, 2)[:, 1])
    obj = {"state": OrderedDict(tensors), "step": 3, "big": 2 ** 80, "neg": -7, "lr": 1e-4, "flags": [True, False, None],
           "betas": (0.9, 0.98), "name": "wavlm ✓", "raw": b"\x00\xff", "keys": {1: "a", 2.5: "b"}, "set": {1, 2},
           "nested": [[{"deep": [1, (2, 3)]}]]}
    path = tmp_path / "plain.pt"
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    expected = torch.load(path, weights_only=protocol == 2)  # torch's safe unpickler reads protocol 2 only; ours, our file
    for mmap in (True, False):
        ours = read_torch_file(path, mmap=mmap)
        assert _same({k: v for k, v in expected.items() if k != "set"}, {k: v for k, v in ours.items() if k != "set"})
        assert ours["set"] == expected["set"]


def test_no_file_format_module_calls_a_loader_that_runs_code():
    """torch.load, torch.jit.load, pickle's loaders and tarfile are never called where model files are read."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "pruned_upstream"
    banned = {"load", "loads", "Unpickler", "_Unpickler", "open"}
    for name in ("checkpoints", "safe_load", "torch_files", "pickle_reader", "fairseq_pickle", "run_dir", "families"):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in banned and isinstance(node.value, (ast.Name, ast.Attribute)):
                owner = ast.unparse(node.value)
                assert owner not in ("torch", "torch.jit", "pickle", "tarfile", "torch.serialization"), \
                    f"{name}.py calls {owner}.{node.attr}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {"pickle", "tarfile", "dill", "joblib"} & set(modules), f"{name}.py imports {modules}"


def _random_value(rng: random.Random, depth: int = 0):
    scalars = [lambda: rng.randint(-2 ** 70, 2 ** 70), lambda: rng.randint(-300, 300), lambda: rng.random() * 1e6,
               lambda: "".join(rng.choice("aé✓ \n\x00z") for _ in range(rng.randint(0, 40))),
               lambda: bytes(rng.randrange(256) for _ in range(rng.randint(0, 20))), lambda: rng.choice([True, False, None])]
    if depth > 4 or rng.random() < 0.4:
        return rng.choice(scalars)()
    kind = rng.choice(["list", "tuple", "dict", "ordered"])
    items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    if kind in ("list", "tuple"):
        return items if kind == "list" else tuple(items)
    keys = [rng.choice(scalars[:4])() for _ in items]
    pairs = list(zip(keys, items))
    return dict(pairs) if kind == "dict" else __import__("collections").OrderedDict(pairs)


def test_random_plain_data_reads_as_pickle_writes_it(tmp_path):
    """Differential: 300 random trees of plain values, pickled by Python (protocols 2 to 5), read back equal."""
    rng = random.Random(1818)
    for case in range(300):
        value = {"v": _random_value(rng)}
        pkl = pickle.dumps(value, protocol=2 + case % 4)
        make = zip_file if case % 2 else legacy_file
        assert _same(value, read_torch_file(make(tmp_path / f"d{case}.pt", pkl, storages={} if make is zip_file else []))), case
