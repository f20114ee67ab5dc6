"""A whole run with networking blocked succeeds: no hidden downloads, no version checks, no hub lookups.

A child Python starts with a ``sitecustomize.py`` on its PYTHONPATH that replaces
``socket.socket.connect``/``connect_ex``, ``socket.create_connection`` and ``socket.getaddrinfo``:
every attempt to reach another machine is written to a log file and fails with ``OSError``
(local ``AF_UNIX`` sockets still work). ``NO_ALBUMENTATIONS_UPDATE`` and ``HF_HUB_OFFLINE`` are
removed from its environment: a user running ``.venv/bin/cellcls`` without the Makefile has neither.

In that child the core chain runs on a tiny synthetic world, each step through the ``cellcls`` CLI
entry point (``cellcls.cli.main``) exactly as the console script calls it: ``synth`` -> ``segment``
(classical) -> ``cell-table`` -> ``prior-submission`` -> ``check-submission`` -> ``evaluate``. Then it
imports timm, albumentations and pytorch_lightning, builds ``create_model('resnet18')`` and runs it.
Last, a deliberate connection (the canary) proves the block is live. The test asserts every step
succeeded and that the canary is the only attempt in the log.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SITECUSTOMIZE = '''
"""Block and record every attempt to reach another machine (cellcls offline test)."""
import os
import socket
import traceback

_LOG = os.environ["CELLCLS_NET_LOG"]


def _refuse(what, detail):
    with open(_LOG, "a", encoding="utf-8") as log:
        stack = "".join(traceback.format_stack(limit=8)[:-1])
        log.write(f"ATTEMPT {what} {detail!r} (pid {os.getpid()})\\n{stack}\\n")
    raise OSError(101, f"network blocked by the cellcls offline test: {what} {detail!r}")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def connect(self, address):
    if self.family == getattr(socket, "AF_UNIX", object()):
        return _connect(self, address)
    _refuse("connect", address)


def connect_ex(self, address):
    if self.family == getattr(socket, "AF_UNIX", object()):
        return _connect_ex(self, address)
    _refuse("connect_ex", address)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.create_connection = lambda address, *args, **kwargs: _refuse("create_connection", address)
socket.getaddrinfo = lambda host, *args, **kwargs: _refuse("getaddrinfo", host)
socket.CELLCLS_NETWORK_BLOCKED = True
'''

DRIVER = '''
import json
import socket
import sys
from pathlib import Path

assert getattr(socket, "CELLCLS_NETWORK_BLOCKED", False), "sitecustomize.py was not loaded"
world, out = Path(sys.argv[1]), Path(sys.argv[2])
results = {}

from cellcls.cli import main

steps = {
    "synth": ["synth", "--out", world, "--train", "8", "--test", "3", "--size", "128", "--seed", "0"],
    "segment": ["segment", "--images", world / "test", "--out", world / "masks", "--backend", "classical",
                "--num-workers", "0", "--no-progress"],
    "cell-table": ["cell-table", "--masks", world / "masks", "--out", world / "cells.parquet", "--no-progress"],
    "prior-submission": ["prior-submission", "--masks", world / "masks", "--sample", world / "sample_submission.csv",
                         "--labels", world / "train.csv", "--out", world / "submission.csv"],
    "check-submission": ["check-submission", world / "submission.csv", "--sample", world / "sample_submission.csv"],
    "evaluate": ["evaluate", "--solution", world / "solution.csv", "--submission", world / "submission.csv",
                 "--json", world / "score.json"],
}
for name, argv in steps.items():
    results[name] = main([str(a) for a in argv])
    if results[name] != 0:
        break

import albumentations
import pytorch_lightning
import timm
import torch

from cellcls.models import create_model

model = create_model("resnet18").eval()
with torch.no_grad():
    results["resnet18 logits"] = list(model(torch.zeros(1, 4, 64, 64)).shape)
results["albumentations"] = type(albumentations.Compose([albumentations.HorizontalFlip(p=1.0)])).__name__
results["trainer"] = type(pytorch_lightning.Trainer(logger=False, enable_progress_bar=False,
                                                    enable_checkpointing=False, accelerator="cpu")).__name__
results["timm"] = timm.__version__

try:  # the canary: proves the block is live and logged
    socket.create_connection(("pypi.org", 443), timeout=1)
    results["canary"] = "connected"
except OSError:
    results["canary"] = "blocked"
(out / "results.json").write_text(json.dumps(results))
'''


def test_the_core_chain_and_the_model_stack_run_with_networking_blocked(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_OFFLINE")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")])),
               CELLCLS_NET_LOG=str(log), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, str(driver), str(tmp_path / "world"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    chain = ["synth", "segment", "cell-table", "prior-submission", "check-submission", "evaluate"]
    assert {step: results.get(step) for step in chain} == dict.fromkeys(chain, 0), done.stderr[-4000:]
    assert results["resnet18 logits"] == [1, 19]
    assert (results["albumentations"], results["trainer"]) == ("Compose", "Trainer")
    score = json.loads((tmp_path / "world" / "score.json").read_text())
    assert score, "evaluate wrote an empty score file"

    attempts = [line.split(" (pid")[0] for line in log.read_text().splitlines() if line.startswith("ATTEMPT")]
    assert results["canary"] == "blocked"
    assert attempts == ["ATTEMPT create_connection ('pypi.org', 443)"], log.read_text()[:6000]  # the canary only
