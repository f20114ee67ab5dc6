"""segment.weights: the published HPA weight files load without their code, and nothing else runs.

The layout fixtures (tests/data/hpa_weights_layout_fixture*.pth.xz) are whole pickled
``pytorch_zoo.unet.DPNUnet`` modules with every tensor zero, in torch's zip and legacy formats: the same
pickle structure as the published files (see /work/shared/reference/hpa_weights_layout_fixture.md).
"""
from __future__ import annotations

import hashlib
import lzma
import os
import pickle
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from cellcls.errors import RegistryError, UnsafeWeightsError, WeightsError, WeightsNotFoundError
from segment import weights
from segment.network import DPNUnet, load_dpn_unet
from segment.weights import (
    find_weights,
    load_weights_into,
    read_weights,
    sha256_file,
    weights_available,
)

DATA = Path(__file__).parent / "data"
LAYOUT_FIXTURES = {
    "zip": DATA / "hpa_weights_layout_fixture.pth.xz",
    "legacy": DATA / "hpa_weights_layout_fixture_legacy.pth.xz",
}


@pytest.fixture(scope="module")
def layout_files(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The two fixtures decompressed (557 MB each) by streaming, once per module, removed after it."""
    folder = tmp_path_factory.mktemp("hpa_weights")
    paths = {}
    for container, source in LAYOUT_FIXTURES.items():
        target = folder / source.name.removesuffix(".xz")
        with lzma.open(source, "rb") as packed, open(target, "wb") as raw:
            shutil.copyfileobj(packed, raw, length=16 << 20)
        paths[container] = target
    yield paths
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def zip_weights(layout_files) -> weights.WeightsFile:
    return read_weights(layout_files["zip"])


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def filled(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for i, tensor in enumerate(model.state_dict().values()):
            tensor.copy_(torch.arange(tensor.numel()).reshape(tensor.shape) + i)
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------- published layout


@pytest.mark.slow
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_published_layout_loads_strictly_into_dpn_unet(layout_files, container, caplog):
    caplog.set_level("INFO", logger="segment.weights")
    read = read_weights(layout_files[container])
    assert (read.container, read.layout, read.data_parallel) == (container, "pickled_module", False)
    assert read.training is True  # as the fixture was pickled; logged for real files
    assert "training flag=True" in caplog.text
    model = load_dpn_unet(layout_files[container])
    state = model.state_dict()
    assert len(state) == 595
    assert not model.training
    nonzero = [key for key, tensor in state.items() if tensor.count_nonzero()]
    assert nonzero == []
    assert state["encoder_stages.4.3.bn.running_var"].shape == (2688,)
    assert state["encoder_stages.1.1.c1x1_w_s1.bn.num_batches_tracked"].dtype == torch.int64


@pytest.mark.slow
def test_module_prefix_of_a_wrapped_dpn_unet_is_stripped(zip_weights):
    prefixed = {f"module.{key}": tensor for key, tensor in zip_weights.state_dict.items()}
    with torch.device("meta"):
        model = DPNUnet()
    load_weights_into(model, prefixed, assign=True)
    assert not any(t.is_meta for t in model.state_dict().values())


@pytest.mark.slow
def test_missing_and_unexpected_keys_are_listed(zip_weights):
    state = dict(zip_weights.state_dict)
    del state["final.0.bias"]
    state["final.1.weight"] = torch.zeros(3)
    state["bottlenecks.0.seq.0.bias"] = torch.zeros(7)
    with torch.device("meta"):
        model = DPNUnet()
    with pytest.raises(WeightsError) as caught:
        load_weights_into(model, state, assign=True)
    message = str(caught.value)
    assert "missing keys (1): final.0.bias" in message
    assert "unexpected keys (1): final.1.weight" in message
    assert "bottlenecks.0.seq.0.bias (7,) (expected (1552,))" in message


# ---------------------------------------------------------------------------- other file layouts


@pytest.mark.parametrize("legacy", [False, True])
def test_data_parallel_whole_module_pickle_is_unwrapped(tmp_path, legacy):
    source = filled(small_net()).eval()
    path = tmp_path / "wrapped.pth"
    torch.save(nn.DataParallel(source), path, _use_new_zipfile_serialization=not legacy)
    target = small_net()
    read = load_weights_into(target, path)
    assert read.data_parallel and read.layout == "pickled_module"
    assert read.training is False  # the wrapped module's flag, not the wrapper's
    assert_same_state(target, source)


def test_legacy_files_with_differing_embedded_source_load_quietly(tmp_path, monkeypatch, recwarn):
    # Real legacy files embed pytorch_zoo's source for every class; torch compares it with the class
    # it is given (our stand-ins), warns, and may write .patch files. Neither must happen.
    path = tmp_path / "with_source.pth"
    source = filled(nn.Sequential(nn.Conv2d(3, 4, 3)))
    torch.save(source, path, _use_new_zipfile_serialization=False)
    original = b"class Sequential(Module):"
    assert path.read_bytes().count(original) == 1
    path.write_bytes(path.read_bytes().replace(original, b"class Sequential(Modula):"))
    monkeypatch.chdir(tmp_path)
    target = nn.Sequential(nn.Conv2d(3, 4, 3))
    load_weights_into(target, path)
    assert_same_state(target, source)
    assert [str(w.message) for w in recwarn] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with_source.pth"]


def test_plain_state_dict_file(tmp_path):
    source = filled(small_net())
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    target = small_net()
    read = load_weights_into(target, path)
    assert (read.layout, read.training, read.data_parallel) == ("state_dict", None, False)
    assert_same_state(target, source)


def test_state_dict_under_a_state_dict_key_with_module_prefix(tmp_path):
    source = filled(small_net())
    path = tmp_path / "checkpoint.pth"
    prefixed = {f"module.{key}": value for key, value in source.state_dict().items()}
    torch.save({"state_dict": prefixed, "epoch": 7}, path)
    target = small_net()
    assert load_weights_into(target, path).data_parallel
    assert_same_state(target, source)


def test_file_with_missing_key_names_file_and_keys(tmp_path):
    state = small_net().state_dict()
    del state["1.running_var"]
    state["2.weight"] = torch.ones(4)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"partial\.pth.*\n.*missing keys \(1\): 1\.running_var") as caught:
        load_weights_into(small_net(), path)
    assert "unexpected keys (1): 2.weight" in str(caught.value)


def test_missing_file_and_garbage_file_raise_weights_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        read_weights(tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(WeightsError, match="garbage.pth"):
        read_weights(garbage)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(small_net()), path)
    with pytest.raises(WeightsError, match="TorchScript"):
        read_weights(path)


# ---------------------------------------------------------------------------- malicious pickles


class _Payload:
    """Pickles as a call of ``func(*args)``: what an attacker's weight file would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
    }


def _give_a_live_payload_time(marker: Path, *, seconds: float = 1.0) -> None:
    # Popen returns before `touch` ran, so a payload that did run needs a moment to show. Poll the
    # marker with a deadline: waiting for child processes would block on long-lived children of
    # other tests (multiprocessing's resource tracker, DataLoader workers).
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.02)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("payload_name", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "legacy_header"])
def test_foreign_globals_are_refused_and_never_run(tmp_path, payload_name, fmt):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[payload_name]
    path = tmp_path / f"evil_{fmt}.pth"
    if fmt == "legacy_header":
        # The payload replaces the legacy stream's first record (the magic number).
        path.write_bytes(pickle.dumps(payload, protocol=2) + b"rest of a file")
    else:
        evil = {"bottlenecks.0.seq.0.bias": torch.zeros(3), "extra": payload}
        # Protocol 4 for zip (STACK_GLOBAL, Python 3 names), torch's default 2 for legacy (GLOBAL with
        # Python 2 names such as __builtin__.eval and commands.Popen): both must be caught.
        zip_format = fmt == "zip"
        protocol = 4 if zip_format else 2
        torch.save(evil, path, _use_new_zipfile_serialization=zip_format, pickle_protocol=protocol)

    with pytest.raises(UnsafeWeightsError) as caught:
        read_weights(path)
    _give_a_live_payload_time(marker)
    assert not marker.exists()
    message = str(caught.value)
    assert str(path) in message
    spellings = {
        "os.system": ["posix.system"],
        "builtins.eval": ["builtins.eval", "__builtin__.eval"],
        "subprocess.Popen": ["subprocess.Popen", "commands.Popen"],
    }[payload_name]
    assert any(f"global {name}," in message for name in spellings), message

    # Control: the payload is live; a plain unpickler runs it.
    result = pickle.loads(pickle.dumps(payload, protocol=2))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


# ---------------------------------------------------------------------------- finding files


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    folders = {name: tmp_path / name for name in ("explicit", "env", "default")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS_DIR", folders["default"])
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folders["env"]))
    return folders


def test_search_order_is_argument_then_environment_then_default(places):
    nuclei = "dpn_unet_nuclei_v1.pth"
    for name in ("default", "env", "explicit"):
        (places[name] / nuclei).write_bytes(b"x")
        assert find_weights("nuclei", weights_dir=places["explicit"]) == places[name] / nuclei
    assert find_weights("nuclei") == places["env"] / nuclei


def test_missing_weights_list_every_place_and_how_to_get_them(places):
    with pytest.raises(WeightsNotFoundError) as caught:
        find_weights("cell", weights_dir=places["explicit"])
    message = str(caught.value)
    for folder in places.values():
        assert str(folder / "dpn_unet_cell_3ch_v1.pth") in message
    for needed in ("dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth", "4665863", "--weights-dir"):
        assert needed in message


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(RegistryError, match="cell, nuclei"):
        find_weights("mitochondria")


def test_weights_available_needs_both_files(places, monkeypatch):
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV)
    assert not weights_available(places["explicit"])
    (places["explicit"] / "dpn_unet_cell_3ch_v1.pth").write_bytes(b"x")
    assert not weights_available(places["explicit"])
    (places["default"] / "dpn_unet_nuclei_v1.pth").write_bytes(b"x")
    assert weights_available(places["explicit"])
    assert not weights_available()


def test_sha256_is_streamed_and_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 + 17)
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_bytes=1000) == expected
