"""A pickle posing as segmentation weights or as a checkpoint is refused without running any of it.

tests/test_weights.py already feeds ``read_weights`` a payload hidden in a state dict (zip and legacy
format, and as the legacy header). This file covers the rest of what a user can point cellcls at:

* the loaders ``cellcls segment`` really calls (``HpaBackend.from_weights`` -> ``load_dpn_unet``, and the
  CLI itself), with the payload as the whole pickled object, a plain ``pickle.dumps`` file, and a
  dotted global name that reaches module internals through an allowed class;
* checkpoints: ``read_checkpoint``, ``load_model_from_checkpoint``, ``load_pretrained``,
  ``create_model(pretrained_file=...)`` and ``read_inference_checkpoint`` (what ``cellcls predict`` uses),
  on ``.ckpt`` and ``.pth`` files in torch's zip format, its legacy format and as plain pickles.

Every case asserts the typed error AND that the payload's marker file was never created; a control
shows each payload is live (an ordinary unpickler runs it).
"""
from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from cellcls.errors import UnsafeWeightsError, WeightsError

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


class Payload:
    """Pickles as the call ``func(*args)``: what an attacker's file holds."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
    }


PAYLOADS = ["os.system", "builtins.exec", "subprocess.Popen"]


def never_created(marker: Path, payload: str = "os.system") -> bool:
    """True if ``marker`` does not exist; for a Popen payload, if it does not appear within a second
    (Popen returns before its child ran; the other payloads run synchronously)."""
    deadline = time.monotonic() + (1.0 if payload == "subprocess.Popen" else 0.0)
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.02)
    return not marker.exists()


def write(path: Path, obj: Any, how: str) -> Path:
    """Save ``obj`` to ``path`` as torch's zip format, its legacy format, or a plain pickle."""
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


@pytest.mark.parametrize("name", PAYLOADS)
def test_every_payload_is_live_under_a_plain_unpickler(tmp_path, name):
    # The control that makes the refusals below mean something.
    marker = tmp_path / "pwned"
    result = pickle.loads(pickle.dumps(payloads(marker)[name]))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


# ------------------------------------------------------------------------------------------ segmentation weights
@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("name", PAYLOADS)
def test_segment_weights_that_are_a_payload_are_refused_unrun(tmp_path, name, how):
    # The payload IS the pickled object, in both files `cellcls segment` loads (HpaBackend.from_weights).
    from segment.backends import HpaBackend
    from segment.network import load_dpn_unet

    marker = tmp_path / "pwned"
    folder = tmp_path / "weights"
    folder.mkdir()
    for filename in ("dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth"):
        write(folder / filename, payloads(marker)[name], how)
    with pytest.raises(WeightsError) as caught:  # UnsafeWeightsError, or unreadable (plain pickle)
        HpaBackend.from_weights(weights_dir=folder)
    assert "dpn_unet_nuclei_v1.pth" in str(caught.value)
    with pytest.raises(WeightsError):
        load_dpn_unet(folder / "dpn_unet_cell_3ch_v1.pth")
    assert never_created(marker, name)


@pytest.mark.parametrize("how", ["zip", "legacy"])
def test_a_payload_among_real_modules_is_refused_by_name(tmp_path, how):
    # A whole-module pickle like the published files, with a payload as one more submodule's attribute.
    from segment.network import load_dpn_unet

    marker = tmp_path / "pwned"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net[0].hook = payloads(marker)["os.system"]
    path = write(tmp_path / "dpn_unet_nuclei_v1.pth", net, how)
    with pytest.raises(UnsafeWeightsError, match=r"global posix\.system.*allowlist"):
        load_dpn_unet(path)
    assert never_created(marker)


def test_a_dotted_global_through_an_allowed_class_is_refused(tmp_path):
    # Protocol 4 lets find_class resolve "Conv2d.__init__.__globals__" attribute by attribute: an
    # allowed module and class, but the module's globals (os, sys, ...) behind them.
    from cellcls.models import read_checkpoint
    from segment.weights import read_weights

    module, name = b"torch.nn.modules.conv", b"Conv2d.__init__.__globals__"
    sneaky = (b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x94\x8c" + bytes([len(name)]) + name
              + b"\x94\x93\x94.")
    assert isinstance(pickle.loads(sneaky), dict)  # control: a plain unpickler hands out the globals
    path = tmp_path / "dpn_unet_nuclei_v1.pth"
    path.write_bytes(sneaky)
    with pytest.raises(UnsafeWeightsError, match=r"Conv2d\.__init__\.__globals__"):
        read_weights(path)
    with pytest.raises(WeightsError):
        read_checkpoint(path)


def test_the_segment_command_refuses_payload_weights_and_exits_1(tmp_path, capsys):
    from cellcls.cli import main

    marker = tmp_path / "pwned"
    folder = tmp_path / "weights"
    folder.mkdir()
    for filename in ("dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth"):
        write(folder / filename, payloads(marker)["os.system"], "zip")
    assert main(["synth", "--out", str(tmp_path / "world"), "--train", "1", "--test", "1", "--size", "64",
                 "--seed", "0"]) == 0
    code = main(["segment", "--images", str(tmp_path / "world" / "test"), "--out", str(tmp_path / "masks"),
                 "--backend", "hpa", "--weights-dir", str(folder), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "refusing to load" in err and "posix.system" in err
    assert never_created(marker)


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoint_with(payload: Any, where: str) -> Any:
    """A Lightning-like checkpoint dict with ``payload`` in its hparams or state dict, or the payload alone."""
    state = {"model.backbone.conv1.weight": torch.zeros(2, 4, 3, 3)}
    if where == "hparams":
        return {"state_dict": state, "hyper_parameters": {"model": {"name": "resnet18"}, "evil": payload},
                "pytorch-lightning_version": "2.6.6"}
    if where == "state_dict":
        return {"state_dict": {**state, "model.head.fc.weight": payload}, "hyper_parameters": {}}
    return payload


def _checkpoint_loaders() -> dict[str, Callable[[Path], Any]]:
    from cellcls.checkpoints import read_inference_checkpoint
    from cellcls.models import create_model, load_model_from_checkpoint, load_pretrained, read_checkpoint

    return {
        "read_checkpoint": read_checkpoint,
        "load_model_from_checkpoint": load_model_from_checkpoint,
        "read_inference_checkpoint": read_inference_checkpoint,
        "load_pretrained": lambda path: load_pretrained(create_model("test_resnet"), path),
        "create_model": lambda path: create_model("test_resnet", pretrained_file=path),
    }


_FORMATS = [("zip", ".ckpt"), ("legacy", ".pth"), ("pickle", ".ckpt")]
_PLACES = ["whole", "hparams", "state_dict"]
# Every place and format for the synchronous payloads; Popen (which costs a second's wait each) once per format.
_CHECKPOINT_CASES = [(name, where, how, suffix) for name in ("os.system", "builtins.exec") for where in _PLACES
                     for how, suffix in _FORMATS] + [("subprocess.Popen", "hparams", how, suffix)
                                                     for how, suffix in _FORMATS]


@pytest.mark.parametrize("name, where, how, suffix", _CHECKPOINT_CASES)
def test_checkpoints_holding_a_payload_are_refused_unrun(tmp_path, name, where, how, suffix):
    marker = tmp_path / "pwned"
    path = write(tmp_path / f"fold0{suffix}", _checkpoint_with(payloads(marker)[name], where), how)
    for loader_name, loader in _checkpoint_loaders().items():
        with pytest.raises(WeightsError) as caught:
            loader(path)
        assert str(path) in str(caught.value), loader_name
        if how == "zip":  # torch names the refused global; read_checkpoint passes it on
            assert isinstance(caught.value, UnsafeWeightsError), (loader_name, caught.value)
            spelled = {"os.system": "posix.system", "builtins.exec": "builtins.exec",
                       "subprocess.Popen": "commands.Popen"}[name]  # torch's protocol-2 name for it
            assert spelled in str(caught.value), (loader_name, caught.value)
    assert never_created(marker, name)
