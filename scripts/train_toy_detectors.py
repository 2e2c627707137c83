"""Train the two shipped toy detectors (closed-set YOLO) on the synthetic world, offline, on CPU.

The cross-check validator needs two detectors that err differently, so the two models differ in architecture
(YOLOv8n vs YOLO11n, both built from their yaml, no pretrained weights), input size (64 vs 96 px) and epochs.
Steps: build the world's train/val splits, convert their COCO instances to an ultralytics dataset (labels/*.txt +
data.yaml) in the work dir, train each model within ``--time-budget-min``, copy each best checkpoint to
``<out-dir>/toy-<arch>.pt`` (at most 8 MB) and record val mAP50 in ``<out-dir>/metrics.json``.

Offline: ``YOLO_OFFLINE=1`` (no connectivity probe, telemetry or update checks), ``YOLO_AUTOINSTALL=false`` (no pip
installs), ``amp=False`` (the AMP check would fetch yolo26n.pt), ``plots=False`` (plots need Arial.ttf), and the
dataset check's unconditional Arial.ttf download is replaced by a no-op (``_keep_offline``).

    python scripts/train_toy_detectors.py                  # full run: writes halluc/assets/detectors/
    python scripts/train_toy_detectors.py --quick          # 1 epoch on 64 images, into the work dir
    python scripts/train_toy_detectors.py --evaluate       # val mAP of the shipped checkpoints on today's world
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detectors.yolo import TOY_DETECTOR_DIR
from halluc.errors import ConfigError, HallucError, InputDataError
from halluc.imagesets import cache_dir
from halluc.runs import atomic_write_json

__all__ = ["ModelPlan", "coco_to_yolo", "evaluate_shipped", "main", "ship_checkpoint", "toy_name", "train_one"]

MAX_CHECKPOINT_MB = 8.0


@dataclass(frozen=True)
class ModelPlan:
    """One detector to train: architecture yaml, input size and epoch count."""

    cfg: str
    imgsz: int
    epochs: int


def toy_name(cfg: str) -> str:
    """Return the shipped name of a model yaml: ``yolov8n.yaml`` -> ``toy-yolov8`` (the scale letter dropped)."""
    return "toy-" + re.sub(r"[nslmx]$", "", Path(cfg).stem)


def _keep_offline() -> None:
    """Configure ultralytics never to reach the network; call before anything imports ultralytics."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import ultralytics.data.utils as data_utils

    # check_det_dataset downloads Arial.ttf for plot labels whatever `plots` says; we never plot.
    data_utils.check_font = lambda *args, **kwargs: None


def coco_to_yolo(instances: Path, image_dir: Path, out: Path, split: str) -> dict[int, str]:
    """Write ``out/images/<split>`` + ``out/labels/<split>`` (YOLO txt) from a COCO split; return class names."""
    try:
        coco = json.loads(instances.read_text(encoding="utf-8"))
        categories = sorted(coco["categories"], key=lambda cat: cat["id"])
        images, annotations = coco["images"], coco["annotations"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputDataError(f"cannot read COCO instances {str(instances)!r}: {exc!r}") from None
    class_of = {cat["id"]: index for index, cat in enumerate(categories)}
    lines: dict[int, list[str]] = {img["id"]: [] for img in images}
    size = {img["id"]: (img["width"], img["height"]) for img in images}
    for ann in annotations:
        width, height = size[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        cx, cy = min(max((x + w / 2) / width, 0.0), 1.0), min(max((y + h / 2) / height, 0.0), 1.0)
        box = (cx, cy, min(w / width, 1.0), min(h / height, 1.0))
        lines[ann["image_id"]].append(f"{class_of[ann['category_id']]} " + " ".join(f"{v:.6f}" for v in box))
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for img in images:
        name = Path(img["file_name"]).name
        shutil.copyfile(image_dir / img["file_name"], out / "images" / split / name)
        label_file = out / "labels" / split / f"{Path(name).stem}.txt"
        label_file.write_text("".join(f"{line}\n" for line in lines[img["id"]]), encoding="utf-8")
    return {index: cat["name"] for index, cat in enumerate(categories)}


def _write_data_yaml(root: Path, names: dict[int, str]) -> Path:
    """Write the ultralytics dataset yaml (JSON is valid YAML) for ``root/images/{train,val}``."""
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": names}
    path = root / "data.yaml"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def _budget_stopper(model: Any, seconds: float) -> dict[str, Any]:
    """Make ``model``'s training stop before an epoch that would overrun ``seconds``; return its live state."""
    state = {"start": time.monotonic(), "epochs_run": 0, "stopped_by_budget": False}

    def count_epoch(trainer: Any) -> None:
        state["epochs_run"] += 1

    def check_budget(trainer: Any) -> None:
        elapsed = time.monotonic() - state["start"]
        # Stop unless another epoch plus the final validation of best.pt (about half an epoch) still fits.
        if not trainer.stop and elapsed + 1.5 * elapsed / max(state["epochs_run"], 1) > seconds:
            trainer.stop = state["stopped_by_budget"] = True

    model.add_callback("on_train_epoch_end", count_epoch)
    model.add_callback("on_fit_epoch_end", check_budget)
    return state


def train_one(
    plan: ModelPlan,
    data_yaml: Path,
    work_dir: Path,
    *,
    batch: int,
    lr0: float,
    workers: int,
    device: str,
    seed: int,
    budget_s: float,
) -> tuple[Path, dict[str, Any]]:
    """Train one model from its yaml; return its best checkpoint and its metrics record."""
    from ultralytics import YOLO

    name = toy_name(plan.cfg)
    model = YOLO(plan.cfg)
    state = _budget_stopper(model, budget_s)
    metrics = model.train(
        data=str(data_yaml),
        imgsz=plan.imgsz,
        epochs=plan.epochs,
        batch=batch,
        optimizer="AdamW",  # 'auto' would pick lr ~3e-4 for 27 classes: far too slow from scratch
        lr0=lr0,
        warmup_epochs=1,
        # glyph identity is shape + colour at 9-30 px: no mosaic (it shrinks them), mild scale/colour jitter
        mosaic=0.0,
        scale=0.25,
        hsv_s=0.3,
        hsv_v=0.3,
        workers=workers,
        device=device,
        seed=seed,
        deterministic=True,
        pretrained=False,
        amp=False,
        plots=False,
        val=True,
        project=str(work_dir / "runs"),
        name=name,
        exist_ok=True,
        verbose=False,
    )  # the final validation of best.pt on the val split
    seconds = time.monotonic() - state["start"]
    best = work_dir / "runs" / name / "weights" / "best.pt"
    record = {
        **asdict(plan),
        "epochs_run": state["epochs_run"],
        "stopped_by_budget": state["stopped_by_budget"],
        "train_seconds": round(seconds, 1),
        "map50": round(float(metrics.box.map50), 4),
        "map50_95": round(float(metrics.box.map), 4),
        "size_mb": round(best.stat().st_size / 2**20, 2),
    }
    return best, record


def evaluate_shipped(
    plan: ModelPlan, data_yaml: Path, checkpoint: Path, *, batch: int, device: str
) -> dict[str, float]:
    """Val mAP of an already shipped checkpoint on this world's val split (after a world change, before retraining)."""
    from ultralytics import YOLO

    metrics = YOLO(str(checkpoint)).val(
        data=str(data_yaml), imgsz=plan.imgsz, batch=batch, device=device, workers=0, plots=False, verbose=False
    )
    return {
        "imgsz": plan.imgsz,
        "map50": round(float(metrics.box.map50), 4),
        "map50_95": round(float(metrics.box.map), 4),
    }


def ship_checkpoint(best: Path, target: Path) -> None:
    """Copy a checkpoint without this machine's paths: absolute paths in its recorded settings become file names."""
    import torch

    checkpoint = torch.load(best, map_location="cpu", weights_only=False)  # our own file, written by ultralytics
    model_args = getattr(checkpoint.get("model"), "args", None)
    for settings in (checkpoint.get("train_args"), model_args):
        for key, value in (settings or {}).items():
            if isinstance(value, str) and os.path.isabs(value):
                settings[key] = Path(value).name
    checkpoint.pop("git", None)
    torch.save(checkpoint, target)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=cache_dir() / "toy_detectors", help="world, dataset, runs")
    parser.add_argument("--out-dir", type=Path, default=None, help=f"default {TOY_DETECTOR_DIR} (--quick: work dir)")
    parser.add_argument("--n-train", type=int, default=2000, help="world train images")
    parser.add_argument("--n-val", type=int, default=300, help="world val images (mAP50 is measured here)")
    parser.add_argument("--image-size", type=int, default=64, help="world image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--model-a", default="yolov8n.yaml", help="first architecture yaml")
    parser.add_argument("--imgsz-a", type=int, default=64)
    parser.add_argument("--epochs-a", type=int, default=40)
    parser.add_argument("--model-b", default="yolo11n.yaml", help="second architecture yaml")
    parser.add_argument("--imgsz-b", type=int, default=96)
    parser.add_argument("--epochs-b", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr0", type=float, default=0.003, help="AdamW learning rate")
    parser.add_argument("--workers", type=int, default=0, help="dataloader worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-budget-min", type=float, default=15.0, help="per model, stops between epochs")
    parser.add_argument("--quick", action="store_true", help="pipeline check: 1 epoch each, at most 64/32 images")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="only measure the checkpoints in --out-dir on the val split, no training",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val = min(args.n_train, 64), min(args.n_val, 32)
        args.epochs_a = args.epochs_b = 1
        args.work_dir = args.work_dir / "quick"
    args.out_dir = args.out_dir or (args.work_dir / "out" if args.quick else TOY_DETECTOR_DIR)
    if toy_name(args.model_a) == toy_name(args.model_b):
        raise ConfigError(f"--model-a and --model-b must differ in architecture, both give {toy_name(args.model_a)!r}")
    return args


def _build_dataset(args: argparse.Namespace) -> Path:
    """Build (or reuse) the world splits and their YOLO conversion; return the data yaml."""
    from halluc.world import build_split

    tag = f"n{args.n_train}-{args.n_val}_s{args.seed}_px{args.image_size}"
    world, root = args.work_dir / f"world_{tag}", args.work_dir / f"yolo_{tag}"
    names: dict[int, str] = {}
    for split, n in (("train", args.n_train), ("val", args.n_val)):
        paths = build_split(split, n, world, seed=args.seed, image_size=args.image_size)
        shutil.rmtree(root / "images" / split, ignore_errors=True)
        shutil.rmtree(root / "labels" / split, ignore_errors=True)
        names = coco_to_yolo(Path(paths.instances), Path(paths.images), root, split)
    return _write_data_yaml(root, names)


def _shipped(out_dir: Path, plan: ModelPlan) -> Path:
    """Where a plan's checkpoint is shipped: ``<out_dir>/toy-<arch>.pt``."""
    return out_dir / f"{toy_name(plan.cfg)}.pt"


def _evaluate(args: argparse.Namespace, plans: tuple[ModelPlan, ...]) -> int:
    """``--evaluate``: print the val mAP of each shipped checkpoint; a missing one is refused before the world is
    built."""
    checkpoints = [_shipped(args.out_dir, plan) for plan in plans]
    missing = [str(path) for path in checkpoints if not path.exists()]
    if missing:
        raise InputDataError(f"--evaluate: no checkpoint at {', '.join(missing)}; train first or pass --out-dir")
    data_yaml = _build_dataset(args)
    for plan, checkpoint in zip(plans, checkpoints, strict=True):
        record = evaluate_shipped(plan, data_yaml, checkpoint, batch=args.batch, device=args.device)
        print(f"{toy_name(plan.cfg)}: {json.dumps(record)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the whole pipeline; return the process exit status."""
    try:
        args = _parse_args(argv)
        _keep_offline()
        plans = (
            ModelPlan(args.model_a, args.imgsz_a, args.epochs_a),
            ModelPlan(args.model_b, args.imgsz_b, args.epochs_b),
        )
        if args.evaluate:
            return _evaluate(args, plans)
        data_yaml = _build_dataset(args)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "world": {"n_train": args.n_train, "n_val": args.n_val, "seed": args.seed, "image_size": args.image_size},
            "quick": args.quick,
        }
        for plan in plans:
            best, record = train_one(
                plan,
                data_yaml,
                args.work_dir,
                batch=args.batch,
                lr0=args.lr0,
                workers=args.workers,
                device=args.device,
                seed=args.seed,
                budget_s=args.time_budget_min * 60,
            )
            if record["size_mb"] > MAX_CHECKPOINT_MB:
                raise ConfigError(f"{best} is {record['size_mb']} MB, over the {MAX_CHECKPOINT_MB} MB asset limit")
            ship_checkpoint(best, _shipped(args.out_dir, plan))
            report[toy_name(plan.cfg)] = record
            print(f"{toy_name(plan.cfg)}: {json.dumps(record)}")
        atomic_write_json(args.out_dir / "metrics.json", report)
    except HallucError as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
