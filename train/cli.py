"""``cellcls train``'s configuration: LightningCLI over :class:`CellClassifier` and :class:`HpaDataModule`.

A run is a YAML file plus dotted overrides::

    cellcls train --config configs/demo_cell.yaml --model.lr 3e-3 --trainer.max_epochs 4 --data.fold 1

Sections: ``model`` (:class:`train.module.CellClassifier`), ``data`` (:class:`train.data.HpaDataModule`),
``trainer`` (``pytorch_lightning.Trainer``: devices, num_nodes, precision, accumulate_grad_batches...),
``checkpoint`` (``ModelCheckpoint``: monitor, mode...), and top-level ``out`` (run folder), ``resume``,
``seed_everything``. Short forms: ``--devices``, ``--num-nodes``, ``--accelerator``, ``--precision``,
``--max-epochs``, ``--fold``, ``--full``, ``--cell-labels``, ``--task``, ``--group-col``, ``--resume``,
``--out``, ``--no-progress``.

The task (``data.task``) picks the model class (:data:`TASK_MODELS`): ``image`` and ``cell`` train
:class:`CellClassifier`, ``arcface`` trains :class:`train.arcface.ArcFaceEmbedder` (its
``model.num_classes`` is the number of groups, linked from the data). The task is read from the
command line (``--data.task``/``--task``) or the ``data.task`` of a ``--config`` file, the last one
given winning.

A key that no section has is refused before anything runs, with one error that names the key, where
it came from and the valid keys of its section (:class:`cellcls.errors.CellclsError`, exit code 1).

Run folder ``out``: ``checkpoints/best-*.ckpt`` (best by ``checkpoint.monitor``) and ``last.ckpt``,
``logs/version_N/metrics.csv`` (CSV) and ``tb/version_N`` (TensorBoard), ``logs/version_N/config.yaml``.
"""
from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Sequence

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from cellcls.errors import CellclsError

from .arcface import ArcFaceEmbedder
from .data import HpaDataModule
from .module import CellClassifier
from .resume import LatestCheckpoint, RngState, SameFolderCheckpointIO

__all__ = ["TrainCLI", "build_cli", "expand_shortcuts", "fit", "resolve_resume", "requested_task", "SHORTCUTS",
           "TASK_MODELS"]

#: short option -> (dotted key, takes a value)
SHORTCUTS: dict[str, tuple[str, bool]] = {
    "--devices": ("--trainer.devices", True),
    "--num-nodes": ("--trainer.num_nodes", True),
    "--accelerator": ("--trainer.accelerator", True),
    "--precision": ("--trainer.precision", True),
    "--max-epochs": ("--trainer.max_epochs", True),
    "--strategy": ("--trainer.strategy", True),
    "--fold": ("--data.fold", True),
    "--cell-labels": ("--data.cell_labels", True),
    "--task": ("--data.task", True),
    "--group-col": ("--data.group_col", True),
    "--full": ("--data.full=true", False),
    "--no-progress": ("--trainer.enable_progress_bar=false", False),
}

#: data.task -> LightningModule class
TASK_MODELS: dict[str, type] = {"image": CellClassifier, "cell": CellClassifier, "arcface": ArcFaceEmbedder}

_TOP_LEVEL = ("config", "out", "resume", "seed_everything", "print_config", "help")
_SECTIONS = ("model", "data", "trainer", "checkpoint")


def expand_shortcuts(argv: Sequence[str]) -> list[str]:
    """Rewrite the short forms of :data:`SHORTCUTS` into dotted keys (``--devices 2`` -> ``--trainer.devices 2``)."""
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in SHORTCUTS:
            target, takes_value = SHORTCUTS[name]
            out.append(target + (f"={value}" if takes_value and eq else ""))
            if name == "--no-progress":
                out.append("--data.progress=false")
        else:
            out.append(arg)
    return out


def checkpoint_dir(out: str) -> str:
    """``OUT/checkpoints`` (a module-level function: the parser must pickle for ``ddp_spawn``)."""
    return str(Path(out) / "checkpoints")


class TrainCLI(LightningCLI):
    """LightningCLI with the run folder, resume, checkpoint defaults and the unknown-key check."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--out", type=str, default="runs/train",
                            help="run folder: checkpoints/, logs/ (CSV), tb/ (TensorBoard)")
        parser.add_argument("--resume", type=str | None, default=None,
                            help="continue a run: a .ckpt path, or 'last' for OUT/checkpoints/last.ckpt")
        # last.ckpt follows every epoch; RngState (instantiate_trainer) makes a resume repeat the shuffles.
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/focal", "checkpoint.mode": "min", "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1, "checkpoint.filename": "best-epoch{epoch:02d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.link_arguments("out", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments("out", "trainer.default_root_dir")
        hook = getattr(self.model_class, "configure_parser", None)
        if hook is not None:  # the task's own links and defaults (arcface: num_classes from the data)
            hook(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (list, tuple)):
            check_keys(parser, list(args))
        super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

            out = self.config["out"]
            kwargs["logger"] = [CSVLogger(save_dir=out, name="logs"), TensorBoardLogger(save_dir=out, name="tb")]
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(RngState())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: temp files in /tmp
            trainer.strategy.checkpoint_io = SameFolderCheckpointIO()
        return trainer


# ----------------------------------------------------------------------------- unknown keys
def _valid_keys(parser: LightningArgumentParser) -> dict[str, list[str]]:
    defaults = parser.get_defaults()
    keys = {section: sorted(defaults[section].keys()) for section in _SECTIONS if section in defaults}
    keys[""] = sorted(set(_TOP_LEVEL) | set(_SECTIONS))
    return keys


def _unknown(section: str, key: str, valid: dict[str, list[str]], where: str) -> CellclsError:
    choices = valid.get(section, valid[""])
    close = difflib.get_close_matches(key, choices, n=1)
    dotted = f"{section}.{key}" if section else key
    hint = f" Did you mean '{section + '.' if section else ''}{close[0]}'?" if close else ""
    scope = f"valid keys of '{section}'" if section else "valid top-level keys"
    return CellclsError(f"unknown config key '{dotted}' ({where}).{hint} The {scope} are: {', '.join(choices)}")


def _check_mapping(mapping: Any, valid: dict[str, list[str]], where: str) -> None:
    if not isinstance(mapping, dict):
        return
    for top, value in mapping.items():
        if top not in valid[""]:
            raise _unknown("", str(top), valid, where)
        if top in _SECTIONS and isinstance(value, dict):
            for key in value:
                if key not in valid.get(top, []):
                    raise _unknown(top, str(key), valid, where)


def check_keys(parser: LightningArgumentParser, argv: Sequence[str]) -> None:
    """Refuse a key no section has, in the ``--config`` files or on the command line.

    Raises
    ------
    CellclsError
        Naming the key, the file (or "command line") and the valid keys of its section.
    """
    import yaml

    valid = _valid_keys(parser)
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("-c", "--config"):
            path = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            i += 0 if eq else 1
            if path is not None and Path(path).is_file():
                _check_mapping(yaml.safe_load(Path(path).read_text()), valid, f"in {path}")
        elif name.startswith("--") and name not in ("--help", "-h"):
            dotted = name[2:]
            section, dot, key = dotted.partition(".")
            if not dot:
                if section not in valid[""]:
                    raise _unknown("", section, valid, "on the command line")
            elif section in valid and section != "":
                first = key.split(".", 1)[0]
                if first not in valid[section]:
                    raise _unknown(section, first, valid, "on the command line")
            else:
                raise _unknown("", section, valid, "on the command line")
        i += 1


# ----------------------------------------------------------------------------- entry points
def requested_task(argv: Sequence[str]) -> str:
    """The ``data.task`` that ``argv`` (short forms expanded) asks for: the last ``--data.task`` or the
    ``data.task`` of a ``--config`` file, in order; ``image`` (the default) when none."""
    import yaml

    task = "image"
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in ("-c", "--config", "--data.task"):
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
                i += 1
            if name == "--data.task":
                task = value
            elif Path(value).is_file():
                config = yaml.safe_load(Path(value).read_text()) or {}
                data = config.get("data") if isinstance(config, dict) else None
                if isinstance(data, dict) and isinstance(data.get("task"), str):
                    task = data["task"]
        i += 1
    return task


def build_cli(argv: Sequence[str], **overrides: Any) -> TrainCLI:
    """Parse ``argv`` (short forms allowed) and instantiate model, datamodule and trainer, without fitting."""
    argv = expand_shortcuts(argv)
    task = requested_task(argv)
    options: dict[str, Any] = dict(
        model_class=TASK_MODELS.get(task, CellClassifier), datamodule_class=HpaDataModule, run=False, auto_configure_optimizers=False,
        load_from_checkpoint_support=False, seed_everything_default=0, save_config_kwargs={"overwrite": True},
        trainer_defaults={"log_every_n_steps": 10},
    )
    options.update(overrides)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        try:
            cli = TrainCLI(args=argv, **options)
        except ValueError as exc:  # jsonargparse wraps errors of a link's compute_fn (arcface: reading groups)
            if isinstance(exc.__cause__, CellclsError):
                raise exc.__cause__ from None
            raise
    built = cli.datamodule.hparams.task
    if TASK_MODELS.get(built) is not type(cli.model) and "model_class" not in overrides:
        raise CellclsError(f"data.task {built!r} was set in a form cellcls train does not read ahead; give it as "
                           f"--data.task {built} (or --task {built}) or as data.task in the --config file")
    return cli


def resolve_resume(resume: str | None, out: str) -> str | None:
    """``'last'`` -> ``OUT/checkpoints/last.ckpt``; a path must exist."""
    if resume is None:
        return None
    path = Path(out) / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise CellclsError(f"--resume {resume}: checkpoint {path} does not exist"
                           + ("; no run has saved a last.ckpt in this --out folder yet" if resume == "last" else ""))
    return str(path)


def fit(cli: TrainCLI) -> dict[str, Any]:
    """Train (resuming when ``--resume`` was given); returns paths and the final validation figures."""
    ckpt_path = resolve_resume(cli.config["resume"], cli.config["out"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    callback = cli.trainer.checkpoint_callback
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    return {
        "best": getattr(callback, "best_model_path", None) or None,
        "last": str(Path(cli.config["out"]) / "checkpoints" / "last.ckpt"),
        "global_step": int(cli.trainer.global_step),
        "metrics": metrics,
    }
