"""Weights from local files: timm/ImageNet state dicts and our own Lightning checkpoints. Never a download.

Two kinds of file, told apart by their keys:

* **Ours** -- a PyTorch Lightning ``.ckpt`` (``{'state_dict': {'model.backbone...': ...}, 'hyper_parameters':
  {...}}``: the training LightningModule keeps the network as ``self.model``), or a plain state dict of a
  :class:`~cellcls.models.CellModel` (every key under ``backbone.``/``head.``, an optional ``module.`` or
  ``model.`` prefix stripped). Loaded into the whole model; every key must fit.
* **timm/ImageNet** -- any other state dict, in timm's own key layout (what ``timm.create_model(name)``
  holds and what the timm weights on the Hugging Face hub contain: ``.safetensors``, ``.pth``, ``.pt``,
  ``.bin``; a ``state_dict``/``model``/``state_dict_ema`` wrapper and ``module.`` prefixes are accepted).
  Loaded into ``model.backbone`` the way timm's own ``pretrained=True`` loader does it: the classifier keys
  named by the model's ``pretrained_cfg['classifier']`` are dropped (the classifier stays freshly
  initialised), and the stem named by ``first_conv`` is adapted from 3 channels to ``in_chans`` with
  ``timm.models.adapt_input_conv`` (channels repeated, then scaled by 3 / in_chans). Original non-timm
  layouts (e.g. torchvision's DenseNet ``norm.1`` keys) are not remapped: convert such a file once with
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` and save its
  ``state_dict()``.

Every file is read with ``torch.load(weights_only=True)`` (or ``safetensors``), so a checkpoint must hold
only tensors and plain containers: the training module must store plain dicts/str/int/float as
hyper-parameters, never ``argparse``/``jsonargparse`` Namespaces or dataclasses (those raise
:class:`~cellcls.errors.UnsafeWeightsError` here).
"""
from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models import adapt_input_conv, get_model_traits
from torch import nn

from ..errors import CellclsError, UnsafeWeightsError, WeightsError, WeightsNotFoundError

__all__ = ["read_checkpoint", "load_pretrained", "load_model_from_checkpoint", "model_config_from_hparams"]

_logger = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
_OWN_ROOTS = ("backbone.", "head.")
_NAME_KEYS = ("name", "model_name", "backbone", "arch")
_CONFIG_KEYS = ("head", "in_chans", "num_classes", "drop_rate", "head_kwargs")
_NOT_CONFIG = ("pretrained_file", "pretrained")
_SHOWN = 5


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in a weight file, read safely onto the CPU.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; anything else with
    ``torch.load(map_location='cpu', weights_only=True)``.

    Raises
    ------
    WeightsNotFoundError
        No file at ``path`` (the message names the absolute path looked at).
    UnsafeWeightsError
        The pickle needs globals outside torch's weights-only allowlist (e.g. a Namespace in the hparams).
    WeightsError
        The file cannot be read as either format.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"no weight file at {path.resolve()}; pass the path of a local .safetensors/.pth/.ckpt file "
            "(cellcls never downloads weights)"
        )
    if path.suffix == ".safetensors":
        try:
            import safetensors.torch
        except ImportError as err:  # pragma: no cover - timm depends on safetensors
            raise WeightsError(f"{path}: reading .safetensors needs `pip install safetensors`") from err
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:
            raise WeightsError(f"{path} is not a readable .safetensors file: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise WeightsError(f"{path} is not a readable PyTorch weight file (torch.load failed)") from err
        raise UnsafeWeightsError(
            f"{path} needs pickled objects outside torch's weights-only allowlist: {', '.join(unsafe)}. "
            "Checkpoints must hold tensors and plain dicts/lists/str/numbers only: save hyper-parameters "
            "as plain dicts (no Namespace or dataclass objects)."
        ) from err
    except Exception as err:
        raise WeightsError(f"{path} is not a readable PyTorch weight file: {err}") from err


def _unsafe_globals(path: Path) -> list[str]:
    """Globals a pickle needs beyond torch's weights-only allowlist; empty if it is no checkpoint at all."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def _as_tensor_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} does not hold a state dict (got {type(obj).__name__}); expected "
                           "a mapping of parameter names to tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path} is not a state dict: entries {bad[:_SHOWN]} are not name -> tensor")
    return dict(obj)


def _strip_common_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.``/``_orig_mod.``/``model.`` while every key carries the same one."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _lightning_state_dict(ckpt: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    raw = _as_tensor_dict(ckpt["state_dict"], path)
    network = {k[len("model."):]: v for k, v in raw.items() if k.startswith("model.")}
    if not network:
        raise WeightsError(f"{path} is a Lightning checkpoint without 'model.' keys (first keys: "
                           f"{list(raw)[:_SHOWN]}); the training module must keep the network as self.model")
    others = sorted({k.split(".", 1)[0] for k in raw if not k.startswith("model.")})
    if others:
        _logger.info("%s: ignoring non-network entries under %s", path, others)
    return _strip_common_prefixes(network)


def _is_lightning(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and (
        "hyper_parameters" in obj or "pytorch-lightning_version" in obj)


def _fit_problems(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
                  ) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and ``'key: file shape vs model shape'`` for shape mismatches."""
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in source if k not in target]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
              for k, v in source.items() if k in target and v.shape != target[k].shape]
    return missing, unexpected, shapes


def _load_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, *, strict: bool,
                  allowed_missing: tuple[str, ...] = (), what: str) -> None:
    missing, unexpected, shapes = _fit_problems(module.state_dict(), state_dict)
    missing = [k for k in missing if k not in allowed_missing]
    if shapes or (strict and (missing or unexpected)):
        parts = [f"{label} {items[:_SHOWN]}{' ...' if len(items) > _SHOWN else ''} ({len(items)})"
                 for label, items in (("shape mismatches", shapes), ("missing keys", missing),
                                      ("unexpected keys", unexpected)) if items]
        raise WeightsError(f"{path} does not fit {what}: " + "; ".join(parts)
                           + ". Check the model name, head, in_chans and num_classes the file was made for.")
    if missing or unexpected:
        _logger.warning("%s: missing keys %s, unexpected keys %s", path, missing[:_SHOWN], unexpected[:_SHOWN])
    module.load_state_dict(state_dict, strict=False)


def _as_tuple(names: Any) -> tuple[str, ...]:
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _adapt_imagenet(backbone: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, in_chans: int
                    ) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """timm's pretrained-load adaptation: drop the classifier, adapt the stem. Returns (state dict, fresh keys)."""
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    state_dict = dict(state_dict)
    fresh: list[str] = []
    target = backbone.state_dict()
    for name in _as_tuple(cfg.get("classifier")):
        for key in (f"{name}.weight", f"{name}.bias"):
            state_dict.pop(key, None)
            if key in target:
                fresh.append(key)
    base_chans = (cfg.get("input_size") or (3,))[0]
    first_conv = get_model_traits(backbone).get("first_conv", cfg.get("first_conv"))
    for name in _as_tuple(first_conv):
        key = f"{name}.weight"
        if key in state_dict and key in target and state_dict[key].shape != target[key].shape:
            try:
                state_dict[key] = adapt_input_conv(in_chans, state_dict[key], base_chans=base_chans)
            except (NotImplementedError, AssertionError, ValueError) as err:
                raise WeightsError(f"{path}: cannot adapt stem {key} {tuple(state_dict[key].shape)} to "
                                   f"{in_chans} channels ({err})") from err
            _logger.info("%s: adapted stem %s from %d to %d channels", path, key, base_chans, in_chans)
    if fresh:
        _logger.info("%s: classifier %s left freshly initialised", path, fresh)
    return state_dict, tuple(fresh)


def _check_hparams_match(model: nn.Module, hparams: Any, path: Path) -> None:
    try:
        saved = model_config_from_hparams(hparams, path=path)
    except WeightsError:
        return  # no usable hparams: the key check decides
    wanted = getattr(model, "config", {})
    diff = [f"{k}={saved.get(k)!r} (asked {wanted.get(k)!r})" for k in ("name", "head", "in_chans", "num_classes")
            if k in saved and k in wanted and saved[k] != wanted[k]]
    if diff:
        raise WeightsError(f"{path} was trained with {', '.join(diff)}; rebuild it as trained with "
                           "cellcls.models.load_model_from_checkpoint(path)")


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> None:
    """Lay the weights of a local file over ``model`` (a :class:`~cellcls.models.CellModel`), in place.

    Parameters
    ----------
    model : CellModel
        Receives the weights: all of it for our checkpoints, ``model.backbone`` for timm/ImageNet files.
    path : str or PathLike
        The weight file (see the module docstring for the two kinds).
    strict : bool
        If True (default) a missing or unexpected key is an error; if False they are logged as warnings.
        A shape mismatch is always an error. The ImageNet classifier is never counted as missing.

    Raises
    ------
    WeightsNotFoundError, UnsafeWeightsError
        See :func:`read_checkpoint`.
    WeightsError
        Not a state dict, or it does not fit (the message names the file and the first mismatching keys and
        shapes). Nothing is loaded then.
    """
    path = Path(path).expanduser()
    raw = read_checkpoint(path)
    if _is_lightning(raw):
        _check_hparams_match(model, raw.get("hyper_parameters"), path)
        _load_checked(model, _lightning_state_dict(raw, path), path, strict=strict, what="the model")
        _logger.info("loaded checkpoint %s", path)
        return
    state_dict = _strip_common_prefixes(_as_tensor_dict(raw, path))
    if all(k.startswith(_OWN_ROOTS) for k in state_dict) and any(k.startswith("backbone.") for k in state_dict):
        _load_checked(model, state_dict, path, strict=strict, what="the model")
        _logger.info("loaded model state dict %s", path)
        return
    backbone = getattr(model, "backbone", model)
    in_chans = int(getattr(model, "in_chans", None) or get_model_traits(backbone)["in_chans"])
    state_dict, fresh = _adapt_imagenet(backbone, state_dict, path, in_chans)
    _load_checked(backbone, state_dict, path, strict=strict, allowed_missing=fresh,
                  what=f"the {type(backbone).__name__} backbone")
    _logger.info("loaded pretrained backbone weights %s", path)


def _model_section(hparams: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """(section, dedicated): ``hparams['model']`` or one nested config dict (dedicated: every key is a
    ``create_model`` argument), else the flat hparams (only the known keys are arguments)."""
    if isinstance(hparams.get("model"), Mapping):
        return hparams["model"], True
    if isinstance(hparams.get("model"), str):
        return {**hparams, "name": hparams["model"]}, False
    if any(isinstance(hparams.get(k), str) for k in _NAME_KEYS):
        return hparams, False
    nested = [v for v in hparams.values() if isinstance(v, Mapping) and isinstance(v.get("name"), str)
              and "head" in v]
    return (nested[0], True) if len(nested) == 1 else (hparams, False)


def model_config_from_hparams(hparams: Any, *, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``create_model`` keyword arguments from a checkpoint's ``hyper_parameters``.

    Accepted layouts: ``{'model': CellModel.config, ...}`` (preferred: the dict ``model.config`` gives), flat
    keys, or one nested dict with ``name`` and ``head`` under any key (``{'model_cfg': {...}}``). The timm name is read from ``name``, ``model_name``, ``backbone`` or ``arch`` (or ``model``
    when that is a string); from a dedicated model dict every other key is a ``create_model`` argument (timm keyword
    arguments included); from flat hparams only ``head``, ``in_chans``, ``num_classes``, ``drop_rate``,
    ``head_kwargs`` and a ``timm_kwargs`` dict are (``create_model``'s defaults otherwise). Any
    ``pretrained``/``pretrained_file`` entry is ignored: the weights come from the checkpoint itself.

    Raises
    ------
    WeightsError
        ``hparams`` is not a mapping or names no model.
    """
    where = f"{path}: " if path is not None else ""
    if not isinstance(hparams, Mapping):
        raise WeightsError(f"{where}checkpoint has no 'hyper_parameters' dict (got {type(hparams).__name__}); "
                           "the training module must call save_hyperparameters() with the model's config")
    source, dedicated = _model_section(hparams)
    name_key = next((k for k in _NAME_KEYS if isinstance(source.get(k), str)), None)
    if name_key is None:
        raise WeightsError(f"{where}hyper_parameters name no timm model (keys: {sorted(map(str, source))}); expected one "
                           f"of {list(_NAME_KEYS)} or a 'model' dict as CellModel.config gives")
    if dedicated:
        config = {k: v for k, v in source.items() if k not in _NOT_CONFIG and k != name_key}
    else:
        config = {k: source[k] for k in _CONFIG_KEYS if source.get(k) is not None}
    config = {"name": source[name_key], **config}
    if isinstance(source.get("timm_kwargs"), Mapping):  # a nested timm_kwargs dict is spread out
        config.pop("timm_kwargs", None)
        config.update({k: v for k, v in source["timm_kwargs"].items() if k not in _NOT_CONFIG})
    return config


def load_model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from its Lightning checkpoint alone (what inference uses).

    Parameters
    ----------
    path : str or PathLike
        A ``.ckpt`` written by the cellcls training module (``state_dict`` with ``model.`` keys, plain
        ``hyper_parameters``).

    Returns
    -------
    model : CellModel
        The architecture from the hyper-parameters with the checkpoint's weights, on the CPU, in ``eval()``.
    hparams : dict
        The checkpoint's ``hyper_parameters`` (a copy).

    Raises
    ------
    WeightsNotFoundError, UnsafeWeightsError, WeightsError
        Missing or unsafe file, no hyper-parameters, or weights that do not fit them.
    """
    from .factory import create_model

    path = Path(path).expanduser()
    raw = read_checkpoint(path)
    if not _is_lightning(raw):
        raise WeightsError(f"{path} is not a Lightning checkpoint (no 'state_dict' with 'hyper_parameters'); "
                           "for a bare state dict use create_model(name, ..., pretrained_file=path)")
    config = model_config_from_hparams(raw.get("hyper_parameters"), path=path)
    hparams = dict(raw["hyper_parameters"])
    try:
        model = create_model(**config)
    except CellclsError:
        raise
    except Exception as err:  # the config comes from the file: timm/torch raise many types on bad values
        raise WeightsError(f"{path}: its hyper_parameters give create_model({config!r:.300}), which fails: "
                           f"{type(err).__name__}: {err}") from err
    _load_checked(model, _lightning_state_dict(raw, path), path, strict=True, what=f"the model {config}")
    _logger.info("rebuilt %s from %s", config, path)
    return model.eval(), hparams
