"""Finding and safely reading the HPA-Cell-Segmentation weight files.

The published files (Zenodo record 4665863) are WHOLE PICKLED ``nn.Module`` objects of hpacellseg's
``pytorch_zoo`` classes, not state dicts. Unpickling an arbitrary file can run arbitrary code, so they are
read through a restricted unpickler whose ``find_class`` admits only ``ALLOWED_GLOBALS`` (the globals such
a file references), hands back parameter-only stand-ins for the ``pytorch_zoo`` classes (pytorch_zoo is
never imported) and raises ``UnsafeWeightsError`` for anything else before it can be called. Both torch
file formats are read: the zip format (torch >= 1.6) and the legacy stream format. Plain state-dict files
(optionally under a ``'state_dict'`` key) are read with ``torch.load(weights_only=True)``.

Where the files are looked for, in order (first hit wins):

1. the ``weights_dir`` argument (the CLI's ``--weights-dir``);
2. the folder in the environment variable ``CELLCLS_SEG_WEIGHTS``;
3. ``DEFAULT_WEIGHTS_DIR`` = ``~/.cache/cellcls/hpacellseg``.

Nothing is ever downloaded: fetch the files by hand (see ``WeightsNotFoundError``'s message).
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import pickle
import pickletools
import types
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cellcls.errors import UnsafeWeightsError, WeightsError, WeightsNotFoundError
from cellcls.registry import Registry

__all__ = [
    "ZENODO_RECORD",
    "ZENODO_URL",
    "WEIGHTS_DIR_ENV",
    "DEFAULT_WEIGHTS_DIR",
    "ALLOWED_GLOBALS",
    "SegWeightsSpec",
    "SEG_WEIGHTS",
    "WeightsFile",
    "find_weights",
    "weights_available",
    "sha256_file",
    "read_weights",
    "load_weights_into",
]

logger = logging.getLogger(__name__)

ZENODO_RECORD = 4665863
ZENODO_URL = f"https://zenodo.org/record/{ZENODO_RECORD}"
#: Environment variable naming a folder that holds the weight files.
WEIGHTS_DIR_ENV = "CELLCLS_SEG_WEIGHTS"
#: Default folder for the weight files (searched last).
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "cellcls" / "hpacellseg"


@dataclass(frozen=True)
class SegWeightsSpec:
    """One published weight file: ``kind`` is what it segments, ``input_channels`` what it is fed."""

    kind: str
    filename: str
    input_channels: str
    zenodo_record: int = ZENODO_RECORD


#: The known weight files, by kind ("nuclei", "cell").
SEG_WEIGHTS: Registry[SegWeightsSpec] = Registry("segmentation weights kind")
SEG_WEIGHTS.add("nuclei", SegWeightsSpec("nuclei", "dpn_unet_nuclei_v1.pth", "(blue, blue, blue)"))
SEG_WEIGHTS.add("cell", SegWeightsSpec("cell", "dpn_unet_cell_3ch_v1.pth", "(red, yellow, blue)"))


# --------------------------------------------------------------------------------------------------
# Finding files


def _search_dirs(weights_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    dirs = []
    if weights_dir is not None:
        dirs.append(("weights_dir argument", Path(weights_dir).expanduser()))
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir:
        dirs.append((f"${WEIGHTS_DIR_ENV}", Path(env_dir).expanduser()))
    dirs.append(("default folder", Path(DEFAULT_WEIGHTS_DIR).expanduser()))
    return dirs


def find_weights(kind: str, *, weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the weight file for ``kind`` ("nuclei" or "cell").

    Looks in ``weights_dir``, then ``$CELLCLS_SEG_WEIGHTS``, then ``DEFAULT_WEIGHTS_DIR``. Raises
    ``RegistryError`` for an unknown kind and ``WeightsNotFoundError`` (listing every place looked and how
    to get the files) when none holds it.
    """
    spec = SEG_WEIGHTS.get(kind)
    places = _search_dirs(weights_dir)
    for index, (label, folder) in enumerate(places):
        candidate = folder / spec.filename
        if candidate.is_file():
            if index > 0 and weights_dir is not None:
                logger.warning("%s is not in %s; using %s", spec.filename, weights_dir, candidate)
            logger.debug("%s weights: %s (%s)", kind, candidate, label)
            return candidate
    looked = "\n".join(f"  - {folder / spec.filename} ({label})" for label, folder in places)
    files = ", ".join(SEG_WEIGHTS.get(name).filename for name in SEG_WEIGHTS.names())
    raise WeightsNotFoundError(
        f"no {kind} segmentation weights found; looked for:\n{looked}\n"
        f"Download {files} by hand from Zenodo record {ZENODO_RECORD} ({ZENODO_URL}) and put them in "
        f"one folder: {Path(DEFAULT_WEIGHTS_DIR)}, or any folder named by ${WEIGHTS_DIR_ENV} or "
        "passed as --weights-dir. cellcls never downloads them itself."
    )


def weights_available(weights_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when both the nuclei and the cell weight files can be found (see ``find_weights``)."""
    try:
        for kind in SEG_WEIGHTS.names():
            find_weights(kind, weights_dir=weights_dir)
    except WeightsNotFoundError:
        return False
    return True


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks of ``chunk_bytes`` (for cache keys on the weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Restricted unpickling


class _PytorchZooStandIn(nn.Module):
    """Holds the parameters, buffers and children of a pickled ``pytorch_zoo`` module; never run."""

    dump_patches = False  # torch would otherwise write .patch files when the legacy source differs
    zoo_name = "pytorch_zoo"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{self.zoo_name} stand-in cannot run: load its state dict into segment.network.DPNUnet"
        )


def _stand_in(qualified_name: str) -> type[nn.Module]:
    class_name = qualified_name.rsplit(".", 1)[1]
    return type(class_name, (_PytorchZooStandIn,), {"__module__": __name__, "zoo_name": qualified_name})


_ZOO_CLASSES = (
    "pytorch_zoo.unet.DPNUnet",
    "pytorch_zoo.abstract_model.ConvBottleneck",
    "pytorch_zoo.abstract_model.UnetDecoderBlock",
    "pytorch_zoo.dpn.DualPathBlock",
    "pytorch_zoo.dpn.BnActConv2d",
    "pytorch_zoo.dpn.CatBnAct",
)

#: (module, name) -> object for every global a weight file may reference; all else is refused.
ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = types.MappingProxyType({
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 spells it this way
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch", "FloatStorage"): torch.FloatStorage,  # torch.load intercepts these two before us
    ("torch", "LongStorage"): torch.LongStorage,
    ("torch.nn.modules.conv", "Conv2d"): nn.Conv2d,
    ("torch.nn.modules.batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
    ("torch.nn.modules.activation", "ReLU"): nn.ReLU,
    ("torch.nn.modules.pooling", "MaxPool2d"): nn.MaxPool2d,
    ("torch.nn.modules.upsampling", "Upsample"): nn.Upsample,
    ("torch.nn.modules.container", "Sequential"): nn.Sequential,
    ("torch.nn.modules.container", "ModuleList"): nn.ModuleList,
    # A file saved from a DataParallel wrapper (on a GPU machine it also holds a torch.device).
    ("torch.nn.parallel.data_parallel", "DataParallel"): nn.DataParallel,
    ("torch", "device"): torch.device,
    **{tuple(name.rsplit(".", 1)): _stand_in(name) for name in _ZOO_CLASSES},
})


def _restricted_pickle_module(source: str) -> types.ModuleType:
    """A stand-in for the ``pickle`` module whose unpickler resolves only ``ALLOWED_GLOBALS``.

    torch.load uses ``pickle_module.Unpickler`` for the main pickle and ``pickle_module.load`` for the
    legacy format's header records, so both go through ``find_class`` below.
    """

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            logger.debug("%s: pickle asks for %s.%s", source, module, name)
            try:
                return ALLOWED_GLOBALS[(module, name)]
            except (KeyError, TypeError):
                raise UnsafeWeightsError(
                    f"{source}: refusing to load: its pickle references the global {module}.{name}, "
                    "which is not on the allowlist of HPA segmentation weight files (unpickling it could "
                    "run arbitrary code). Use the published files from Zenodo record "
                    f"{ZENODO_RECORD}, or a plain state-dict file."
                ) from None

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("cellcls_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def _torch_load_restricted(path: Path) -> Any:
    restricted = _restricted_pickle_module(str(path))
    with warnings.catch_warnings():
        # Legacy files embed pytorch_zoo's source; torch compares it with our stand-ins and warns.
        warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
        # Unpickling is safe despite weights_only=False: every global goes through the allowlist of
        # `restricted`, and weights_only=True cannot read the legacy format's `module` records.
        return torch.serialization.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)


# --------------------------------------------------------------------------------------------------
# From a loaded object to a state dict


@dataclass(frozen=True)
class WeightsFile:
    """What ``read_weights`` found in a file.

    ``layout`` is "pickled_module" (the published files) or "state_dict"; ``container`` "zip" or
    "legacy"; ``data_parallel`` whether the module was wrapped (keys then had a ``module.`` prefix, now
    stripped); ``training`` the pickled root module's train flag (None for state dicts). ``state_dict``
    holds CPU tensors.
    """

    path: Path
    container: Literal["zip", "legacy"]
    layout: Literal["pickled_module", "state_dict"]
    data_parallel: bool
    training: bool | None
    state_dict: dict[str, torch.Tensor]


_MAX_MODULE_DEPTH = 64


def _module_tensors(root: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Persistent parameters and buffers of an unpickled module tree, named as ``state_dict`` would.

    Walks the pickled ``_parameters``/``_buffers``/``_modules`` dicts directly instead of calling
    ``state_dict()``, so no hook or method carried by the pickle runs.
    """
    tensors: dict[str, torch.Tensor] = {}

    def visit(prefix: str, module: Any, ancestors: frozenset[int]) -> None:
        if module is None:  # a child slot registered as None
            return
        where = prefix.rstrip(".") or "the root"
        if not isinstance(module, nn.Module):
            raise WeightsError(f"{source}: {where} is a {type(module).__name__}, not a module")
        if id(module) in ancestors or len(ancestors) > _MAX_MODULE_DEPTH:
            raise WeightsError(f"{source}: the module tree under {where} is cyclic or too deep")
        state = vars(module)
        non_persistent = _slot(state, "_non_persistent_buffers_set", (set, frozenset), source, where)
        for group in ("_parameters", "_buffers"):
            for name, value in _slot(state, group, Mapping, source, where).items():
                if value is None or name in non_persistent:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise WeightsError(f"{source}: {prefix}{name} is a {type(value).__name__}, not a tensor")
                tensors[f"{prefix}{name}"] = value
        for name, child in _slot(state, "_modules", Mapping, source, where).items():
            visit(f"{prefix}{name}.", child, ancestors | {id(module)})

    visit("", root, frozenset())
    return dict(sorted(tensors.items()))


def _slot(state: dict[str, Any], name: str, kind: Any, source: str, where: str) -> Any:
    """``state[name]`` of an unpickled module, checked to be a ``kind`` (empty when absent or None)."""
    value = state.get(name)
    if value is None:
        return {} if kind is Mapping else set()
    if not isinstance(value, kind):
        raise WeightsError(f"{source}: {name} of {where} is a {type(value).__name__}, not what torch writes")
    return value


def _as_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str, bool | None]:
    if isinstance(obj, nn.Module):
        children = vars(obj).get("_modules")
        wrapped = isinstance(obj, nn.DataParallel) and isinstance(children, Mapping)
        inner = children.get("module") if wrapped else obj
        training = vars(inner).get("training") if isinstance(inner, nn.Module) else None
        flag = training if isinstance(training, bool) else None
        return _module_tensors(obj, source), "pickled_module", flag
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"{source}: expected a pickled DPNUnet, a state dict or a dict with a 'state_dict' entry, "
            f"got {type(obj).__name__}"
        )
    bad = [str(key) for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: state-dict entries that are not tensors: {', '.join(bad[:10])}")
    return {str(key): value for key, value in obj.items()}, "state_dict", None


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    prefix = "module."
    if not any(key.startswith(prefix) for key in state_dict):
        return state_dict, False
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}, True


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_LEGACY_PICKLES = 5  # magic number, protocol, system info, the object, the storage keys


def _memo_problem(stream: Any, *, pickles: int = 1) -> str | None:
    """Why the first ``pickles`` pickles of ``stream`` would make CPython's unpickler allocate wildly, or None.

    A pickler numbers its memo entries 0, 1, 2, ... and each PUT takes two bytes or more, so an index
    beyond the bytes of its pickle read so far is damage: CPython's unpickler would first grow its memo
    table to twice that index, 8 bytes a slot (7 GB for one flipped byte of the published layout).
    Scanning stops where the unpickler would stop first: at a malformed opcode, or at a GLOBAL outside
    ``ALLOWED_GLOBALS`` (refused by name, UnsafeWeightsError).
    """
    for _ in range(pickles):
        start = stream.tell()
        try:
            for opcode, arg, pos in pickletools.genops(stream):
                if opcode.name == "GLOBAL" and tuple(str(arg).split(" ", 1)) not in ALLOWED_GLOBALS:
                    return None
                if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg > pos - start:
                    return f"memo index {arg} at byte {pos} lies beyond the pickle read so far (damaged file)"
        except (ValueError, EOFError):
            return None
    return None


def _check_pickle(path: Path, container: str) -> None:
    if container == "zip":
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
            problem = None if name is None else _memo_problem(archive.open(name))
    else:
        with open(path, "rb") as stream:
            problem = _memo_problem(stream, pickles=_LEGACY_PICKLES)
    if problem:
        raise WeightsError(f"{path}: cannot read the weight file: {problem}")


def _load_object(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not a plain state dict (e.g. the published whole-module pickles): use the allowlist instead.
        logger.debug("%s: not loadable with weights_only=True; using the restricted unpickler", path)
        return _torch_load_restricted(path)


def _is_torchscript(path: Path) -> bool:
    """Whether a zip file holds a TorchScript archive (zipfile raises many types on a damaged one)."""
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def read_weights(path: str | os.PathLike[str]) -> WeightsFile:
    """Read a weight file into a state dict without executing code from it.

    Accepts the published hpacellseg files (whole pickled modules, zip or legacy format, optionally
    DataParallel-wrapped), plain state-dict files and dicts with a ``'state_dict'`` entry. A ``module.``
    key prefix is stripped. Raises ``WeightsNotFoundError`` (no such file), ``UnsafeWeightsError`` (a
    pickled global outside ``ALLOWED_GLOBALS``; nothing of it was run) or ``WeightsError`` (unreadable).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file {path} does not exist")
    try:
        # is_zipfile itself raises on some damaged end records (BadZipFile: a zip64 locator naming 2 disks)
        container: Literal["zip", "legacy"] = "zip" if zipfile.is_zipfile(path) else "legacy"
        if container == "zip" and _is_torchscript(path):
            # torch.load would hand a TorchScript archive to torch.jit.load: not a weight file.
            raise WeightsError(f"{path} is a TorchScript archive, not a DPNUnet weight file")
        _check_pickle(path, container)
        obj = _load_object(path)
    except WeightsError:
        raise
    except Exception as error:  # torch raises many types on corrupt input
        raise WeightsError(f"{path}: cannot read the weight file ({type(error).__name__}: {error})") from error
    state_dict, layout, training = _as_state_dict(obj, str(path))
    state_dict, data_parallel = _strip_module_prefix(state_dict)
    logger.info(
        "%s: %s in %s format, %d tensors, DataParallel=%s, pickled training flag=%s "
        "(cellcls runs the network in eval mode regardless)",
        path, layout, container, len(state_dict), data_parallel, training,
    )
    return WeightsFile(path, container, layout, data_parallel, training, state_dict)


def _check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
        return f"\n  {title} ({len(items)}): {shown}" if items else ""

    raise WeightsError(
        f"{source} does not fit {type(model).__name__}:"
        + listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("wrong shapes", wrong_shape)
        + "\nExpected an hpacellseg DPNUnet(3, 3, 'dpn92') file such as dpn_unet_nuclei_v1.pth."
    )


def load_weights_into(
    model: nn.Module,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    assign: bool = False,
) -> WeightsFile | None:
    """Load ``weights`` (a file, see ``read_weights``, or a state dict) strictly into ``model``.

    Every key must be present with the right shape, else ``WeightsError`` lists the missing, unexpected
    and mis-shaped keys. Tensors are cast to the model's dtypes. ``assign=True`` makes the loaded tensors
    the model's own (no copy; use with a model built on the ``meta`` device). Returns the ``WeightsFile``
    read, or None when a state dict was given.
    """
    if isinstance(weights, Mapping):
        read, state_dict, source = None, dict(weights), "the state dict"
        state_dict, _ = _strip_module_prefix(state_dict)
    else:
        read = read_weights(weights)
        state_dict, source = read.state_dict, str(read.path)
    _check_keys(model, state_dict, source)
    expected = model.state_dict()
    state_dict = {key: value.to(expected[key].dtype) for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)
    return read
