"""Hostile torch files against our reader (torch_files.py, pickle_reader.py): each mechanism of
issue 18 (TorchScript, tar, legacy "module" ids, BUILD on admitted functions, zero strides, memo
DAGs) and a generated suite (every opcode against every admitted name, BUILD on every value the
reader can hand out, every persistent-id form, random opcode streams; zip and legacy containers).
After each file: no marker file exists, nothing was imported, the admitted torch functions are
unchanged, and a trusted file still loads bit-identical in the same process."""

from __future__ import annotations

import os
import pickle
import random
import struct
import sys
import tarfile
import threading
import time
import zipfile

import pytest
import torch
from conftest import release_cfg

from pruned_upstream import CheckpointError, load_model
from pruned_upstream.checkpoints import arch_from_release_cfg
from pruned_upstream.fairseq_pickle import NAMES
from pruned_upstream.model import WavLM
from pruned_upstream.torch_files import LEGACY_MAGIC, read_torch_file

P = b"\x80\x02"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _pid(key="0", numel=4, cls="FloatStorage", extra=b"") -> bytes:
    return _tuple(_str("storage"), _global("torch", cls), _str(key), _str("cpu"), _int(numel), extra) + b"Q"


def _tensor(pid: bytes, offset=0, size=(4,), stride=(1,)) -> bytes:
    return (_global("torch._utils", "_rebuild_tensor_v2") + _tuple(
        pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89",
        _global("collections", "OrderedDict") + b")R") + b"R")


FLOATS = struct.pack("<4f", 1, 2, 3, 4)


def zip_file(path, pkl: bytes, storages=None, extra=None):
    """torch's zip layout around a pickle of ours (records stored, as torch writes them)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        for key, data in (storages if storages is not None else {"0": FLOATS}).items():
            z.writestr(f"archive/data/{key}", data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
        z.writestr("archive/version", "3\n")
    return path


def legacy_file(path, pkl: bytes, storages=None):
    """torch's legacy layout: magic, protocol, system info, the object, the keys, each storage."""
    storages = storages if storages is not None else [("0", 4, FLOATS)]
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = pickle.dumps(LEGACY_MAGIC, 2) + pickle.dumps(1001, 2) + pickle.dumps(info, 2)
    tail = pickle.dumps([k for k, _, _ in storages], 2) + b"".join(struct.pack("<q", n) + d for _, n, d in storages)
    path.write_bytes(head + pkl + tail)
    return path


ADMITTED = [getattr(torch._utils, n) for n in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter")]


def _snapshot():
    functions = [(f.__defaults__, f.__kwdefaults__, dict(f.__dict__), f.__code__, f.__name__) for f in ADMITTED]
    classes = [dict(vars(getattr(torch, n))) for n in ("FloatStorage", "LongStorage", "HalfStorage")]
    tokens = {k: (v.kind, v.dotted, v.extra) for k, v in NAMES.items()}
    return functions, classes, tokens, set(sys.modules)


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """A release file, its weights by torch.load(weights_only=True), and what we read from it."""
    path = tmp_path_factory.mktemp("trusted") / "release.pt"
    torch.manual_seed(0)
    torch.save({"cfg": release_cfg(), "model": WavLM(arch_from_release_cfg(release_cfg())).state_dict()}, path)
    return path, torch.load(path, weights_only=True)["model"], load_model(path).state_dict()


def _assert_still_trusted(trusted, before):
    path, by_torch, ours = trusted
    assert _snapshot() == before, "reading a hostile file changed an admitted function, a token or imported a module"
    again, torch_again = load_model(path).state_dict(), torch.load(path, weights_only=True)["model"]
    for name, value in ours.items():
        assert torch.equal(again[name], value), name
    for name, value in by_torch.items():
        assert torch.equal(torch_again[name], value) and value.dtype == torch_again[name].dtype, name


def _read_both(tmp_path, pkl: bytes, tag: str, containers=None):
    """Our reader on `pkl` in both containers (or those given): a value or a CheckpointError, nothing else."""
    for make in containers or (zip_file, legacy_file):
        path = make(tmp_path / f"{tag}_{make.__name__}.pt", pkl)  # a new name: rewriting a mapped file is slow
        try:
            read_torch_file(path)
        except CheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < 1200, str(err)[:300]


# ---------------------------------------------------------------------------- the mechanisms of issue 18
def test_a_torchscript_archive_is_refused_before_any_loader(tmp_path, monkeypatch):
    module = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(module, str(tmp_path / "script.pt"))
    calls = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append(a) or module)
    with pytest.raises(CheckpointError, match=r"script\.pt: a TorchScript archive .*refused"):
        load_model(tmp_path / "script.pt")
    assert calls == []


def test_a_tar_archive_starting_like_a_pickle_is_refused_and_touches_nothing(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    os.chmod(victim, 0o600)
    before = os.stat(victim)
    with tarfile.open(tmp_path / "evil.pt", "w", format=tarfile.GNU_FORMAT) as tar:
        first = tarfile.TarInfo("\udc80" + "x" * 20)  # the name's first byte is 0x80: passes a magic check
        tar.addfile(first)
        link = tarfile.TarInfo("storages")
        link.type, link.linkname, link.mode, link.mtime = tarfile.LNKTYPE, str(victim), 0o777, 0
        tar.addfile(link)
    assert (tmp_path / "evil.pt").read_bytes()[:1] == b"\x80"
    with pytest.raises(CheckpointError, match=r"evil\.pt: a tar archive"):
        load_model(tmp_path / "evil.pt")
    after = os.stat(victim)
    assert (after.st_mode, after.st_mtime_ns, after.st_nlink) == (before.st_mode, before.st_mtime_ns, before.st_nlink)


def test_legacy_module_persistent_ids_are_refused(tmp_path):
    marker = tmp_path / "marker"
    pid = _tuple(_str("module"), _global("collections", "OrderedDict"), _str(str(marker)), _str("class X: pass")) + b"Q"
    for make in (legacy_file, zip_file):
        path = make(tmp_path / "module.pt", P + b"}" + _str("cfg") + pid + b"s.")
        with pytest.raises(CheckpointError, match=r"module\.pt: refused: a persistent id that is not a storage .*"
                                                  r"\(in the pickle of a torch (zip|legacy \(pre-1\.6\)) checkpoint\)"):
            read_torch_file(path)
    assert not list(tmp_path.glob("*marker*")) and not list(tmp_path.glob("*.patch"))


def test_build_on_an_admitted_function_is_refused_and_later_loads_are_unchanged(tmp_path, trusted):
    before = _snapshot()
    state = b"N" + b"}" + _str("__defaults__") + _tuple(b"\x88", b"N") + b"s" + b"\x86"  # (None, {'__defaults__': ...})
    pkl = P + _global("torch._utils", "_rebuild_tensor_v2") + state + b"b0" + b"}."
    try:
        for make in (zip_file, legacy_file):
            with pytest.raises(CheckpointError, match=r"refused: BUILD on "):
                load_model(make(tmp_path / "slots.pt", pkl))
        _assert_still_trusted(trusted, before)
    finally:  # on a reader that applied it, undo it for the tests after this one
        torch._utils._rebuild_tensor_v2.__defaults__ = before[0][0][0]


def test_zero_stride_and_overlapping_tensors_are_refused(tmp_path):
    cfg = release_cfg()
    state = WavLM(arch_from_release_cfg(cfg)).state_dict()
    state["encoder.layers.0.fc1.weight"] = torch.zeros(1).expand(state["encoder.layers.0.fc1.weight"].shape)
    torch.save({"cfg": cfg, "model": state}, tmp_path / "expanded.pt")
    with pytest.raises(CheckpointError, match=r"expanded\.pt: refused: a tensor .*stride 0 .*zero, negative and overlapping"):
        load_model(tmp_path / "expanded.pt")
    base = torch.arange(8.0)
    torch.save({"a": base[:6], "b": base[2:]}, tmp_path / "overlap.pt")
    with pytest.raises(CheckpointError, match=r"overlap\.pt: two tensors share elements"):
        read_torch_file(tmp_path / "overlap.pt")
    torch.save({"a": base[:4], "b": base[4:]}, tmp_path / "disjoint.pt")  # views side by side: read
    assert torch.equal(read_torch_file(tmp_path / "disjoint.pt")["b"], base[4:])
    for bad in (_tensor(_pid(), 1, (4,), (1,)), _tensor(_pid(), 0, (2, 2), (1, 1)), _tensor(_pid(), 0, (2,), (-1,))):
        with pytest.raises(CheckpointError, match="refused: a tensor of storage 0"):
            read_torch_file(zip_file(tmp_path / "bad.pt", P + bad + b"."))


def _dag(levels: int) -> bytes:
    """A memo DAG of 2**levels leaves in a few bytes per level: t(i+1) = (t(i), t(i))."""
    out = _str("leaf") + b"q\x000"
    for i in range(levels):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0"
    return out + b"h" + bytes([levels])


@pytest.mark.parametrize("where", ["value", "key"])
def test_a_memo_dag_of_2_to_the_60_leaves_is_refused_quickly(tmp_path, where):
    dag = _dag(60)
    inner = b"}" + _str("x") + dag + b"s" if where == "value" else b"}" + dag + _int(1) + b"s"
    path = legacy_file(tmp_path / "dag.pt", P + b"}" + _str("cfg") + inner + b"s" + _str("model") + b"}s.", storages=[])
    assert path.stat().st_size < 1500
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"dag\.pt: .*(more values than it stores|dict key .* only plain values)"):
        load_model(path)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_hf_config_files_that_are_not_regular_are_refused_at_once(tmp_path, kind, name):
    from test_hostile_files import HF_CONFIG

    (tmp_path / "hf").mkdir()
    if name != "config.json":
        (tmp_path / "hf" / "config.json").write_text(__import__("json").dumps(HF_CONFIG))
    if kind == "fifo":
        os.mkfifo(tmp_path / "hf" / name)
    else:
        os.symlink("/dev/zero", tmp_path / "hf" / name)
    result = []
    thread = threading.Thread(target=lambda: result.append(_error_of(tmp_path / "hf")), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), f"{name} as {kind} was read without end"
    assert f"{name}: not a regular file" in result[0], result[0]


def _error_of(path) -> str:
    try:
        load_model(path)
    except CheckpointError as err:
        return str(err)
    return "loaded"


def test_a_refused_fairseq_style_file_says_what_and_why_in_our_words(tmp_path):
    pkl = (P + b"}" + _str("cfg") + _global("omegaconf.dictconfig", "DictConfig") + b")\x81" + _str("model")
           + _global("posix", "system") + _str("true") + b"\x85Rs.")
    with pytest.raises(CheckpointError) as err:
        load_model(zip_file(tmp_path / "hubert.pt", pkl, storages={}))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'hubert.pt'}: refused global posix.system in the pickle of a torch zip "
                           "checkpoint: loading it would run code")
    assert "Alternatively" not in text and "Weights only" not in text and "\n" not in text


def test_container_checks(tmp_path):
    ok = P + _tensor(_pid()) + b"."
    assert torch.equal(read_torch_file(zip_file(tmp_path / "ok.pt", ok)), torch.tensor([1.0, 2, 3, 4]))
    assert torch.equal(read_torch_file(legacy_file(tmp_path / "ok_legacy.pt", ok)), torch.tensor([1.0, 2, 3, 4]))
    with pytest.raises(CheckpointError, match=r"zip member archive/extra/x is not one of torch's records"):
        read_torch_file(zip_file(tmp_path / "member.pt", ok, extra={"archive/extra/x": b"1"}))
    with pytest.raises(CheckpointError, match=r"storage 0 declares 4 values; its record holds 8 bytes"):
        read_torch_file(zip_file(tmp_path / "short.pt", ok, storages={"0": FLOATS[:8]}))
    with pytest.raises(CheckpointError, match=r"storage 0: its stored size is not the declared 4 values"):
        read_torch_file(legacy_file(tmp_path / "short_legacy.pt", ok, storages=[("0", 2, FLOATS[:8])]))
    with pytest.raises(CheckpointError, match=r"storage 1 is used but has no record"):
        read_torch_file(zip_file(tmp_path / "nokey.pt", P + _tensor(_pid("1")) + b"."))


# ---------------------------------------------------------------------------- the generated suite
def _payloads(marker: str) -> list[bytes]:
    text = _str(marker)
    state = b"}" + _str("__defaults__") + text + b"\x85s"
    return [b")", text + b"\x85", text + _str("w") + b"\x86", state, b"N" + state + b"\x86", b"]" + text + b"a",
            _pid(), _tensor(_pid()), b"(" + text + b"t", _int(7) + b"\x85"]


def _operations(payload: bytes, marker: str) -> list[bytes]:
    """Ways to apply a name (on the stack) to a payload, one opcode each, then STOP."""
    text = _str(marker)
    return [payload + b"R", payload + b"\x81", payload + b"}\x92", payload + b"b", payload + b"a",
            b"(" + payload + b"e", text + payload + b"s", b"(" + text + payload + b"u", b"(" + payload + b"\x90",
            payload + b"Q", payload + b"2\x86", payload + b"0", payload + b"\x94h\x00\x86",
            b"(" + payload + b"i" + b"os\nsystem\n", b"(" + payload + b"o", b"\x82\x01", payload + b"Pmarker\n"]


REFUSED_NAMES = [("builtins", "open"), ("posix", "system"), ("torch", "from_file"), ("torch.jit", "load"),
                 ("torch.serialization", "load"), ("builtins", "getattr"), ("torch._utils", "_rebuild_device_tensor_from_numpy")]


def test_every_opcode_against_every_admitted_name(tmp_path, trusted):
    """~9,000 files: each admitted (and some refused) name under every applying opcode with
    every payload, in the zip or the legacy container (alternating: each pair of a name and an
    opcode meets both)."""
    before, marker = _snapshot(), str(tmp_path / "marker")
    names = sorted(NAMES) + REFUSED_NAMES
    for i, (module, name) in enumerate(names):
        for j, payload in enumerate(_payloads(marker)):
            for k, op in enumerate(_operations(payload, marker)):
                container = (zip_file, legacy_file)[(j + k) % 2]
                _read_both(tmp_path, P + _global(module, name) + op + b".", f"c{i}_{j}_{k}", [container])
    assert not os.path.exists(marker)
    _assert_still_trusted(trusted, before)


def test_every_byte_as_an_opcode_after_every_admitted_name(tmp_path, trusted):
    """All 256 byte values right after each admitted name and a marker payload (legacy container:
    the cheaper one to write; the zip one is covered above), ~11,000 files."""
    before, marker = _snapshot(), str(tmp_path / "marker")
    payload = _str(marker) + _str("w") + b"\x86"
    for i, key in enumerate(sorted(NAMES)):
        for code in range(256):
            _read_both(tmp_path, P + _global(*key) + payload + bytes([code]) + b".", f"o{i}_{code}", [legacy_file])
    assert not os.path.exists(marker)
    _assert_still_trusted(trusted, before)


def _producers() -> list[bytes]:
    """Every kind of value the reader can hand out, as a pickle fragment that pushes one."""
    built = _global("argparse", "Namespace") + b")\x81}b"
    fixed = [b"]", b"}", b")", b"\x8f", b"(\x91", _str("x"), b"C\x01x", _int(1), b"G" + struct.pack(">d", 1.5), b"N",
             b"\x88", _global("collections", "OrderedDict") + b")R", built, _pid(), _tensor(_pid()),
             _global("_codecs", "encode") + _str("ab") + _str("latin1") + b"\x86R"]
    tokens = [_global(*key) for key in sorted(NAMES)]
    records = [_global(*key) + b")\x81" for key, v in sorted(NAMES.items()) if v.kind == "record"]
    return fixed + tokens + records


def test_build_on_every_value_the_reader_hands_out(tmp_path, trusted):
    before, marker = _snapshot(), str(tmp_path / "marker")
    states = [b"}" + _str("__defaults__") + _str(marker) + b"\x85s", b"N}" + _str("__name__") + _str(marker) + b"s\x86",
              _str(marker), b"N"]
    for i, value in enumerate(_producers()):
        for j, state in enumerate(states):
            _read_both(tmp_path, P + value + state + b"b.", f"b{i}_{j}")
            _read_both(tmp_path, P + b"}" + _str("k") + value + state + b"bs.", f"bs{i}_{j}")
    # what BUILD may do: give a fresh record its state once; drop an OrderedDict's
    ns = read_torch_file(zip_file(tmp_path / "ns.pt", P + _global("argparse", "Namespace") + b")\x81}" + _str("a")
                                  + _int(1) + b"sb."))
    assert ns == {"a": 1}
    od = read_torch_file(zip_file(tmp_path / "od.pt", P + _global("collections", "OrderedDict") + b")R" + states[0] + b"b."))
    assert type(od).__name__ == "OrderedDict" and not hasattr(od, "__defaults__") and not od
    assert not os.path.exists(marker)
    _assert_still_trusted(trusted, before)


def test_every_persistent_id_form(tmp_path, trusted):
    before, marker = _snapshot(), str(tmp_path / "marker")
    forms = [_pid(extra=b"N"), _pid(extra=_tuple(_str("0"), _int(0), _int(4))), _pid(cls="UntypedStorage"),
             _pid(numel=-1), _pid(numel=2 ** 31 - 1), _pid(key="../../x"), _pid(key="9"),
             _tuple(_str("module"), _global("collections", "OrderedDict"), _str(marker), _str("x")) + b"Q",
             _tuple(_str("storage"), _global("argparse", "Namespace"), _str("0"), _str("cpu"), _int(4)) + b"Q",
             _tuple(_str("storage"), _str("FloatStorage"), _str("0"), _str("cpu"), _int(4)) + b"Q",
             _tuple(_str("storage"), _global("torch", "FloatStorage"), _int(0), _str("cpu"), _int(4)) + b"Q",
             _str("storage") + b"Q", _int(0) + b"Q", b"]" + _str("storage") + b"aQ", b"}Q", b"NQ", b")Q",
             _tuple(_str("storage")) + b"Q"]
    for i, pid in enumerate(forms):
        for j, use in enumerate([pid, _tensor(pid), _tensor(pid, 0, (2, 2), (2, 1)), _tensor(pid, 3, (1,), (1,))]):
            _read_both(tmp_path, P + b"}" + _str("x") + use + b"s.", f"p{i}_{j}")
    assert not os.path.exists(marker)
    _assert_still_trusted(trusted, before)


def test_random_opcode_streams(tmp_path, trusted):
    """3,000 seeded random pickles from a vocabulary of opcodes, names, markers and storages."""
    before, marker = _snapshot(), str(tmp_path / "marker")
    vocabulary = ([bytes([c]) for c in b"(0012NJ]a e)t}dsuRb\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x94Qlh"]
                  + [b"q\x00", b"h\x00", b"q\x01", b"h\x01", _str(marker), _str("x"), _int(3), b"K\x00", _pid(),
                     _tensor(_pid())] + [_global(*key) for key in sorted(NAMES)] + [_global(*k) for k in REFUSED_NAMES])
    rng = random.Random(18)
    for case in range(3000):
        body = b"".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 24)))
        make = zip_file if case % 2 else legacy_file
        try:
            read_torch_file(make(tmp_path / f"r{case}.pt", P + body + b"."))
        except CheckpointError as err:
            assert "\n" not in str(err), str(err)[:300]
    assert not os.path.exists(marker)
    _assert_still_trusted(trusted, before)


def test_one_stored_tensor_under_many_names_is_refused(tmp_path):
    cfg = release_cfg(layers=4)
    state = WavLM(arch_from_release_cfg(cfg)).state_dict()
    for i in range(1, 4):  # every layer's fc1 is layer 0's: the file stores a quarter of what it declares
        state[f"encoder.layers.{i}.fc1.weight"] = state["encoder.layers.0.fc1.weight"]
    torch.save({"cfg": cfg, "model": state}, tmp_path / "tied.pt")
    with pytest.raises(CheckpointError, match=r"tied\.pt: encoder\.layers\.1\.fc1\.weight and encoder\.layers\.0\.fc1"
                                              r"\.weight are one stored tensor"):
        load_model(tmp_path / "tied.pt")


def test_messages_quote_a_files_names_and_values_only_briefly(tmp_path):
    long = "k" * 1_000_000
    state = {**WavLM(arch_from_release_cfg(release_cfg())).state_dict(), long: torch.zeros(1)}
    torch.save({"cfg": release_cfg(), "model": state}, tmp_path / "long.pt")
    with pytest.raises(CheckpointError, match="unexpected keys") as err:
        load_model(tmp_path / "long.pt")
    assert len(str(err.value)) < 2000
    pkl = P + _global("x" * 200, "y" * 200) + b"."
    with pytest.raises(CheckpointError, match="refused global x{60}\\.\\.\\.\\.y{60}") as err:
        read_torch_file(zip_file(tmp_path / "name.pt", pkl))
    assert len(str(err.value)) < 1000


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
def test_a_model_file_that_is_not_regular_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "model.pt"
    os.mkfifo(path) if kind == "fifo" else os.symlink("/dev/zero", path)
    result = []
    thread = threading.Thread(target=lambda: result.append(_error_of(path)), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), f"model.pt as {kind} was read without end"
    assert "model.pt: not a regular file" in result[0], result[0]

