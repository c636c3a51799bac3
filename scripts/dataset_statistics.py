"""The pixel statistics metrics/dataset.json records for the synthetic world, computed on any
VOC-layout dataset, so the demo's proportions can be checked against VOC 2012 itself:

    python scripts/dataset_statistics.py data/voc2012/VOCdevkit/VOC2012 train [SegmentationClass]

Prints foreground fraction of the labelled pixels per image and area per object (a class in an
image) as mean / p10 / median / p90 / max, and classes per image (bnr/data/synthetic.py).
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnr.data.synthetic import area_statistics, label_areas  # noqa: E402
from bnr.data.voc import read_split  # noqa: E402
from bnr.io import read_label_png  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    root, split = Path(sys.argv[1]), sys.argv[2]
    mask_dir = root / (sys.argv[3] if len(sys.argv) > 3 else "SegmentationClass")
    areas = [label_areas(read_label_png(mask_dir / f"{i}.png")) for i in read_split(root, split)]
    doc = area_statistics(areas)
    doc["mean_classes_per_image"] = round(float(np.mean([len(a["objects"]) for a in areas])), 3)
    doc["images"] = len(areas)
    print(json.dumps(doc, indent=2))
