"""Break the method on purpose and check that the tests notice (DEVELOPERS.md, "Mutation checks").

Each mutation below is a deliberate defect of the paper's method, written as a one-place text
edit. For each, the working tree (tracked and untracked files, as ``git ls-files`` lists them) is
copied to a temporary folder, the edit is made there, and the named tests are run on the copy:
a mutation passes the check when at least one of them fails. Run it after any change to the
method's code::

    python scripts/mutation_checks.py            # all mutations, about 2 minutes on 2 cores
    python scripts/mutation_checks.py --only sign --only detach

Exit status 1 when a mutation survives (every test passed) or its text is gone from the code
(``tests/test_mutation_checks.py`` checks the texts on every test run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    defect: str  # what a researcher could get wrong
    path: str  # the file it edits (relative to the repository)
    old: str  # text that occurs exactly once in that file
    new: str
    tests: tuple[str, ...]  # the tests that must notice (at least one fails)


MUTATIONS = (
    Mutation("sign", "the BNR loss's sign flipped (L = L_cls - L_M**)", "bnr/cam/losses.py",
             "loss = cls + extra", "loss = cls - extra",
             ("tests/test_losses.py",)),
    Mutation("detach", "the detach on A-bar* removed (gradients through the noise, eq. 7)",
             "bnr/cam/losses.py",
             "mean_patch_attention(attn_sum, num_blocks).detach() * noise_scale",
             "mean_patch_attention(attn_sum, num_blocks) * noise_scale",
             ("tests/test_losses.py",)),
    Mutation("last_block", "M* from the last block's attention only (eq. 3-4 sums all blocks)",
             "bnr/models/attention.py",
             "total = head_mean if total is None else total + head_mean",
             "total = head_mean",
             ("tests/test_attention_equations.py", "tests/test_conformer.py")),
    Mutation("transpose", "A* transposed in eq. 5 (M*[i] = sum_j A*[j, i] M[j])",
             "bnr/cam/maps.py",
             "torch.bmm(flat, attn_patch.transpose(1, 2))", "torch.bmm(flat, attn_patch)",
             ("tests/test_cam.py",)),
    Mutation("psa_crf", "PSA's CRF kernels (bilateral sxy 80, srgb 13) instead of TransCAM's",
             "params.yaml",
             "  bilateral_sxy: 50     # bilateral kernel spatial std (PSA probability version: 80)"
             "\n  bilateral_srgb: 5 ",
             "  bilateral_sxy: 80     # bilateral kernel spatial std (PSA probability version: 80)"
             "\n  bilateral_srgb: 13",
             ("tests/test_crf.py",)),
    Mutation("threshold_first", "the seed threshold applied before the normalisation "
             "(to the raw CAM scores)", "bnr/cam/maps.py",
             "return normalize_cams(cams).cpu()", "return cams.cpu()",
             ("tests/test_cam.py",)),
    Mutation("transcam_trains_bnr", "method=transcam silently training the BNR loss too",
             "bnr/cam/losses.py",
             '    if method == "bnr":\n        extra',
             '    if method in ("bnr", "transcam"):\n        extra',
             ("tests/test_losses.py", "tests/test_training.py::test_methods_train_differently")),
)


def check_texts(root: Path = REPO) -> list[str]:
    """The mutations whose ``old`` text does not occur exactly once (the list went stale)."""
    stale = []
    for m in MUTATIONS:
        count = (root / m.path).read_text().count(m.old)
        if count != 1:
            stale.append(f"{m.name}: {m.path} holds its text {count} times (expected once)")
    return stale


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
        check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_mutation(m: Mutation) -> tuple[bool, str]:
    """(caught, the last line pytest printed) of one mutation, on a fresh copy of the tree."""
    with tempfile.TemporaryDirectory(prefix=f"bnr-mutation-{m.name}-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        target = copy / m.path
        target.write_text(target.read_text().replace(m.old, m.new, 1))
        env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1",
               "DVC_NO_ANALYTICS": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-n0", "-q", "-x", "-p", "no:cacheprovider",
             *m.tests], cwd=copy, env=env, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.strip()]
        failed = [x for x in lines if x.startswith("FAILED")]
        return done.returncode != 0, (failed or lines or ["(no output)"])[-1][:160]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only this mutation (repeatable): "
                             + ", ".join(m.name for m in MUTATIONS))
    args = parser.parse_args(argv)
    stale = check_texts()
    for line in stale:
        print(f"stale: {line}")
    survived = 0
    for m in MUTATIONS:
        if args.only and m.name not in args.only:
            continue
        caught, line = run_mutation(m)
        survived += not caught
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:20s} {m.defect}\n"
              f"         {line}", flush=True)
    return 1 if survived or stale else 0


if __name__ == "__main__":
    sys.exit(main())
