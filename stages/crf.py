"""Stage crf: dense-CRF the random-walk labels into pseudo labels; mIoU of seeds / RW / CRF."""

from pathlib import Path

from bnr.config import Params
from bnr.crf_settings import crf_kwargs
from bnr.data.classes import class_names
from bnr.data.voc import read_split
from bnr.metrics import write_class_table
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.pseudo_labels import crf_split, evaluate_pseudo_labels
from bnr.stage import run_stage


def main(params: Params) -> None:
    data, rw = params.data, params.random_walk
    ids = read_split(data.root, data.infer_split)
    stats = crf_split(params, ids, Path("data/rw_labels"), Path("data/pseudo_labels"))
    metrics, table = evaluate_pseudo_labels(params)
    write_class_table(table, Path("metrics/pseudo_labels_per_class"))
    write_metrics("metrics/pseudo_labels.json", {  # the seeds' mIoU: metrics/seeds.json
        **{k: metrics[k] for k in ("miou_random_walk", "miou_crf")},
        "images_evaluated": metrics["images"],
        "all_background_images": stats["all_background"],
        "crf_seconds": stats["seconds"],
    }, protocol_record(
        params, dataset=params.dataset, split=data.seed_eval_split,
        labelled_split=data.infer_split, images=metrics["images"],
        images_labelled=stats["images"],
        ground_truth=data.gt_dir, method=params.method, noise_scale=params.noise_scale,
        seed=params.seed, num_classes=len(class_names(params.dataset)),
        seed_threshold=metrics["seed_threshold"], miou_seeds=metrics["miou_seeds"],
        affinity_model=data.affinity_model,
        beta=rw.beta, logt=rw.logt, bg_score=rw.bg_score, radius=rw.radius,
        random_walk="sparse", crf=crf_kwargs(params.crf),
        metric="mIoU (%) over all classes from the accumulated confusion matrix",
        per_class="metrics/pseudo_labels_per_class.csv",
    ))
    print(f"mIoU seeds {metrics['miou_seeds']:.2f}, random walk "
          f"{metrics['miou_random_walk']:.2f}, CRF {metrics['miou_crf']:.2f} "
          f"({metrics['images']} images; CRF {stats['seconds']} s)")


if __name__ == "__main__":
    run_stage(main, __doc__)
