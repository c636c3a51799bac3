"""Helpers shared by the thin stage CLIs in ``stages/``."""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bnr.config import Params, load_params
from bnr.curves import remove_stale_temporaries, stage_outputs
from bnr.data.checks import check_stage_inputs
from bnr.declared import declared_params, declared_view
from bnr.distributed import relaunch_under_torchrun
from bnr.errors import BnrError
from bnr.pretrained import resolve_pretrained


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (outputs not written, training resumable)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def clean_stale_outputs(params: Params, stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """Remove the temporaries a killed run of ``stage`` left next to its outputs."""
    for tmp in remove_stale_temporaries(stage_outputs(dvc_yaml, stage,
                                                      {"dataset": params.dataset})):
        print(f"removed {tmp} (left by an interrupted run)")


def run_stage(main: Callable[[Params], None], description: str, distributed: bool = False) -> None:
    """Parse ``--params``, load and validate them, run ``main``; BnrError -> one line, exit 1.

    When ``dvc.yaml`` in the working directory has this stage, ``main`` sees only the params the
    stage declares there (:mod:`bnr.declared`): reading any other key stops with one line.

    ``auto`` ``*.pretrained`` keys are resolved for the dataset first (bnr/pretrained.py).

    ``distributed``: a training stage; with ``runtime.nproc`` > 1 a plain start re-launches the
    script under ``torch.distributed.run`` (N processes) and exits with its status.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files, never from a hub
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        stage = Path(sys.argv[0]).stem
        keys = declared_params(stage)
        params = resolve_pretrained(load_params(args.params))
        if int(os.environ.get("RANK", "0")) == 0:  # hygiene, not a result: all params
            clean_stale_outputs(params, stage)
        if keys is not None:
            params = declared_view(params, stage, keys)
        check_stage_inputs(params.data, stage)  # splits, images, masks: before any long work
        if distributed:
            code = relaunch_under_torchrun(params.runtime.nproc,
                                           [sys.argv[0], "--params", args.params])
            if code is not None:
                if code:
                    raise BnrError(f"{Path(sys.argv[0]).stem}: {params.runtime.nproc} torchrun "
                                   f"processes failed (exit status {code}; see above)")
                return
        main(params)
    except BnrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}; outputs were not written (training resumes from its checkpoint)",
              file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
