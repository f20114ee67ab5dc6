"""``cellcls train`` (also ``python -m train``): the Command; heavy imports happen inside ``run``."""
from __future__ import annotations

import argparse

from cellcls.cli import Command

__all__ = ["TRAIN"]


#: options the cellcls parser itself handles; every other token goes to the training config parser
_OWN_OPTIONS = frozenset({"-h", "--help", "-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})


def _arguments(parser: argparse.ArgumentParser) -> None:
    """Hand every token but -h/-v/-q to LightningCLI (its dotted keys are not known to argparse).

    argparse cannot collect unknown ``--section.key`` options into a positional, so this parser's
    ``parse_known_args`` splits the tokens first: its own options are parsed as usual, the rest lands
    in ``args.cli_args`` in order.
    """
    parser.add_argument_group(
        "training config",
        "--config CFG.yaml [--section.key VALUE ...]: a YAML config and dotted overrides (sections model, data, "
        "trainer, checkpoint; short forms --devices, --num-nodes, --precision, --max-epochs, --fold, --full, "
        "--cell-labels, --task (= --data.task), --group-col (= --data.group_col), --resume, --out, --no-progress). "
        "'--print_config' prints the resolved config.")
    parser.set_defaults(cli_args=[])
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        import sys

        tokens = list(sys.argv[1:] if args is None else args)
        own = [t for t in tokens if t in _OWN_OPTIONS]
        namespace, extras = original(own, namespace)
        namespace.cli_args = [t for t in tokens if t not in _OWN_OPTIONS]
        return namespace, extras

    parser.parse_known_args = parse_known_args


def _run(args: argparse.Namespace) -> int:
    import logging

    from train.cli import build_cli, fit

    cli = build_cli(args.cli_args)
    result = fit(cli)
    if cli.trainer.is_global_zero:
        log = logging.getLogger("train")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items())
                          if not k.startswith("val/ap_"))
        print(f"trained to step {result['global_step']}; final validation: {shown}")
        print(f"best checkpoint: {result['best']}")
        print(f"last checkpoint: {result['last']}")
        log.debug("result %s", result)
    return 0


TRAIN = Command(
    name="train",
    help="train an image- or cell-level classifier or an ArcFace embedding (PyTorch Lightning) from a YAML config",
    description="Train a multilabel classifier on whole images (task 'image') or on crops of every segmented "
    "cell (task 'cell', weak image labels broadcast or soft per-cell labels; --data.dark_negative true moves "
    "the targets of cells whose protein channel stays at background to Negative), validate each epoch (focal loss, "
    "macro/micro F1, per-class AP; mAP@0.6 of the validation cells on a world with per-cell truth) and save "
    "checkpoints that carry everything inference needs (thresholds, classes, crops, statistics, mask key). "
    "The config's sections are the typed arguments of the model, the data module, the Lightning Trainer and "
    "the checkpoint callback; any key can be overridden as --section.key VALUE. Task 'arcface' (--task arcface "
    "--group-col group) trains the 2019 metric-learning network on the groups (antibody ids) of the label file "
    "instead, validated by retrieval precision@1 of held-out images (one per group) against the training images; "
    "embed with 'cellcls embed'. Several GPUs or nodes: "
    "--devices N [--num-nodes M] (Lightning DDP).",
    example="""
    cellcls train --config configs/demo_cell.yaml
    cellcls train --config configs/demo_cell.yaml --model.lr 3e-3 --max-epochs 8 --fold 1 --out runs/f1
    cellcls train --config configs/seed002_efficientnet_b0.yaml --devices 4 --precision 16-mixed
    cellcls train --config configs/demo_cell.yaml --resume last
    cellcls train --config configs/demo_cell.yaml --print_config
    cellcls train --config configs/arcface_demo.yaml
    cellcls train --task arcface --group-col group --data.images train --data.labels train.csv --data.image_size 512
    """,
    add_arguments=_arguments,
    run=_run,
)
