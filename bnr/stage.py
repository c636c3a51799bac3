"""Helpers shared by the thin stage CLIs in ``stages/``."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bnr.config import Params, load_params
from bnr.distributed import relaunch_under_torchrun
from bnr.errors import BnrError
from bnr.pretrained import resolve_pretrained


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_stage(main: Callable[[Params], None], description: str, distributed: bool = False) -> None:
    """Parse ``--params``, load and validate them, run ``main``; BnrError -> one line, exit 1.

    ``auto`` ``*.pretrained`` keys are resolved for the dataset first (bnr/pretrained.py).

    ``distributed``: a training stage; with ``runtime.nproc`` > 1 a plain start re-launches the
    script under ``torch.distributed.run`` (N processes) and exits with its status.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files, never from a hub
    try:
        params = resolve_pretrained(load_params(args.params))
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
    except KeyboardInterrupt:
        print("interrupted; outputs were not written (training resumes from its checkpoint)",
              file=sys.stderr)
        sys.exit(130)
