"""Headline benchmark: searched early-exit networks against hand-placed exits on CIFAR-10.

The whole pipeline on the CIFAR-10 JPEG data (data config ``cifar10-jpeg``, 45,000 train /
5,000 val held out of the training images / 10,000 test), in resumable steps:

``train``      the supernet, for a fixed wall-clock budget (``--train-minutes``, 8): a short
               measured throughput fixes the epochs, then training runs in checkpointed chunks;
``resnet18``   the reference: a standard ResNet-18 (torchvision layout, 3×3 stem, no max-pool),
               same data, augmentation, optimiser and wall time (``--resnet-minutes``);
``search``     NSGA-II over archs + thresholds on the validation split, ``--trials`` trials;
``baselines``  with the same supernet weights: random search with the same trial budget, the
               static largest subnet, and exits at every stage end with MSDNet's
               budgeted-batch thresholds (fit on val);
``retrain``    the chosen trial (the report's rule) exported, then retrained from scratch for
               ``--retrain-minutes`` (as the supernet); its thresholds refit on val, its
               budgeted-batch curve on test;
``kendall``    ``--kendall-archs`` (8) archs of the front retrained from scratch for
               ``--kendall-epochs`` each: Kendall τ of inherited against retrained accuracy;
``evaluate``   test accuracy and expected MACs of every point of the front, budgeted-batch
               curves on test (chosen arch and baselines), the oracle curve, hypervolumes, the
               targets (PASS/MISS), exitnas's HTML report (``<out>/report/report.html``), a
               comparison page (``<out>/headline.html``) and the ``## headline`` section of
               ``benchmarks/RESULTS.md``;
``all``        the steps above in that order.

Usage (from the repository root)::

    python benchmarks/headline.py STEP [STEP ...] --out runs/headline [--device auto|cuda|cpu] [--smoke]

Every step reads what earlier steps wrote under ``--out`` (supernet checkpoint, the Optuna
study in ``study.db``, ``<step>.json``) and writes its own ``<step>.json`` atomically, with
the wall time it took (on the GPU machine, its GPU minutes), summed over the commands it
took. A step that is done is skipped. One command stops starting work when
``--max-minutes`` (9) are spent, leaves a checkpoint, and exits with status 3: run the same
command again to continue. Budgets and trial counts are fixed on the first command into an
``--out`` folder (``settings.json``); a later command that names other ones stops.

``--smoke`` runs everything tiny on a CPU (400 training images copied out of the tar, one
epoch or less, 10 trials; a few minutes on two cores) into ``--out`` only: it never writes
``benchmarks/RESULTS.md``, and its outputs are marked SMOKE, not a measurement.

How to run it on the GPU machine (staging with ``device-pack``, what a run carries, the
commands, step by step, and ``publish``): ``benchmarks/README.md``. The code: the harness
(settings, run folder, step logs, ``main``) in ``_headline_harness.py``, the steps in
``_headline_steps.py``, the ResNet-18 reference in ``_resnet18.py``, the ``evaluate`` step's
numbers and pages in ``_headline_report.py``.
"""

from __future__ import annotations

import sys

from _headline_harness import main as _main
from _headline_steps import STEP_FUNCTIONS


def main(argv: list[str] | None = None) -> int:
    return _main(argv, STEP_FUNCTIONS, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
