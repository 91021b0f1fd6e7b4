"""Pretrain ``tiny`` on synthetic chips, then compare trained and random weights side by side.

1. ``geofm.synth`` -> ``geofm.chip`` -> ``geofm.pretrain`` (``tiny`` from random weights,
   Clay's masked-autoencoder objective). Acceptance: the validation reconstruction loss
   of the last epoch is at most half that of epoch 1. The wall-clock time is recorded.
2. Search quality: every chip-date is embedded (CLS) with the random-weight ``tiny``
   (seed 0, the pretraining's starting point) and with the pretrained encoder, each with
   ``--time-location zero`` and ``encode``; for every chip-date its 10 nearest
   chip-dates by cosine, **other locations only**, give same-class precision@10 (the
   synth land-cover class of each chip), averaged per class and then over classes
   (classes with >= 10 chip-dates), as ``tests/search/test_synth_acceptance.py`` does.
3. ``--finetune``: a segmentation head (``geofm.finetune``, frozen encoder) for each
   weight x time/location x token-whitening combination; validation mIoU on held-out
   locations.

The pretraining sees every chip of the run (self-supervised, no labels): this is the
domain-adaptive use the stage is for, so the evaluation chips are not held out from it.

    python benchmarks/bench_pretrain.py                  # pretrain + search comparison
    python benchmarks/bench_pretrain.py --finetune       # plus the fine-tuning comparison
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def embeddings(root: Path) -> pd.DataFrame:
    """chip_id, scene_id and CLS vector of every embedded chip-date of ``root``."""
    frames = [pd.read_parquet(p, columns=["chip_id", "scene_id", "embedding"])
              for p in sorted((root / "embeddings").glob("*.parquet"))]
    return pd.concat(frames, ignore_index=True)


def precision_at_10(df: pd.DataFrame, classes: dict[str, str]) -> dict[str, float]:
    """Same-class precision@10 by class (other locations only) and their mean."""
    vec = np.stack(df["embedding"].to_numpy()).astype(np.float64)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    ids = df["chip_id"].astype(str).to_numpy()
    cls = np.array([classes[i] for i in ids])
    sim = vec @ vec.T
    sim[ids[:, None] == ids[None, :]] = -np.inf  # same location (incl. itself) excluded
    top = np.argsort(-sim, axis=1)[:, :10]
    hit = (cls[top] == cls[:, None]).mean(axis=1)
    counts = collections.Counter(cls)
    out = {c: float(hit[cls == c].mean()) for c in sorted(counts) if counts[c] >= 10}
    out["mean"] = float(np.mean(list(out.values())))
    out["chance"] = float(np.mean([counts[c] / len(cls) for c in out if c != "mean"]))
    return out


def report(result: dict) -> str:
    """Markdown tables of a result dict (the loss curve and the side-by-side scores)."""
    h = result["history"]
    o = result["options"]
    first, last = h[0]["val_loss"], h[-1]["val_loss"]
    parts = [
        f"synth {o['size']} px, {o['n_dates']} dates, chips {o['chip_size']} px: "
        f"{result['counts']['train_chips']} training / {result['counts']['val_chips']} "
        f"validation chip-dates ({result['counts']['train_locations']} / "
        f"{result['counts']['val_locations']} locations); `tiny` from random weights, "
        f"{len(h)} epochs, batch {o['batch_size']}, lr {o['lr']:g}, mask ratio 0.75, "
        f"{result['threads']} CPU threads. Pretraining took **{result['pretrain_seconds']:.0f} s**"
        f" (data: {result['data_seconds']:.0f} s).",
        "",
        f"Validation reconstruction loss {first:.4f} -> {last:.4f} "
        f"(**{last / first:.2f}x** of epoch 1; goal <= 0.5x: "
        f"**{'PASS' if last <= 0.5 * first else 'FAIL'}**).",
        "",
        _table([[str(e["epoch"]), f"{e['train_loss']:.4f}", f"{e['val_loss']:.4f}",
                 f"{e['seconds']:.1f}"] for e in h], ["epoch", "train loss", "val loss", "s"]),
    ]
    search = result.get("search", {})
    if search:
        names = [c for c in next(iter(search.values())) if c not in ("mean", "chance")]
        rows = [[k.replace("/", ", time/location "), f"**{v['mean']:.3f}**",
                 *[f"{v[c]:.2f}" for c in names]] for k, v in search.items()]
        chance = next(iter(search.values()))["chance"]
        parts += ["", f"Same-class precision@10 (other locations only; chance {chance:.3f}):",
                  "", _table(rows, ["weights", "mean", *names])]
    ft = result.get("finetune", {})
    if ft:
        rows = [[*k.split("/"), f"{v['mean_iou']:.3f}"] for k, v in ft.items()]
        parts += ["", f"Fine-tuned segmentation head, best validation mIoU in "
                  f"{o['ft_epochs']} epochs:", "",
                  _table(rows, ["weights", "time/location", "tokens", "mIoU"])]
    return "\n".join(parts) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=384, help="synth tile side, px")
    p.add_argument("--n-dates", type=int, default=4)
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune", action="store_true", help="also the fine-tuning comparison")
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--results", type=Path,
                   default=Path(__file__).parent / "results" / "pretrain.json")
    args = p.parse_args()

    import torch

    from geofm.chip import chip
    from geofm.embed import embed
    from geofm.pretrain import pretrain
    from geofm.synth import synthesize

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    t0 = time.perf_counter()
    synth = synthesize(work / "synth", seed=args.seed, size=args.size, n_dates=args.n_dates,
                       chip_size=args.chip_size, n_events=0, overwrite=True)
    root = work / "root"
    chip(synth / "items", root, chip_size=args.chip_size, max_cloud=0.05, progress=False,
         overwrite=True)
    t_data = time.perf_counter() - t0
    truth = json.loads((synth / "truth.json").read_text())
    size = truth["chip_size"]
    classes = {f"{c['tile']}_{size}_{c['row']:04d}_{c['col']:04d}": c["class"]
               for c in truth["cells"]}

    out = work / "pretrain"
    t0 = time.perf_counter()
    record = pretrain(root, out=out, model="tiny", epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=False,
                      overwrite=True)
    t_pretrain = time.perf_counter() - t0
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    first, last = history[0]["val_loss"], history[-1]["val_loss"]
    result: dict = {"data_seconds": t_data, "pretrain_seconds": t_pretrain,
                    "threads": torch.get_num_threads(), "counts": record.counts,
                    "history": history, "ratio_last_first": last / first,
                    "options": vars(args) | {"work": str(work), "results": str(args.results)}}
    print(f"pretrain: {t_pretrain:.0f} s, val loss {first:.4f} -> {last:.4f} "
          f"({last / first:.2f}x)")

    search: dict = {}
    for weights in ("random", "pretrained"):
        for tl in ("zero", "encode"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights are half the point here
                embed(root, model="tiny" if weights == "random" else None,
                      checkpoint=None if weights == "random" else out / "encoder.ckpt",
                      time_location=tl, batch_size=32, overwrite=True, progress=False,
                      seed=args.seed)
            search[f"{weights}/{tl}"] = precision_at_10(embeddings(root), classes)
            print(weights, tl, search[f"{weights}/{tl}"])
    result["search"] = search

    if args.finetune:
        from geofm.finetune import finetune
        from geofm.model import load_encoder

        names = [truth["classes"][k] for k in sorted(truth["classes"], key=int)]
        labels = sorted((synth / "labels").glob("*.tif"))
        ft: dict = {}
        for weights in ("random", "pretrained"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                encoder = (load_encoder(preset="tiny", seed=args.seed) if weights == "random"
                           else load_encoder(out / "encoder.ckpt"))
            for tl in ("zero", "encode"):
                for whiten in (True, False):
                    key = f"{weights}/{tl}/{'whiten' if whiten else 'no-whiten'}"
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        finetune(root, labels, work / "head", encoder=encoder,
                                 epochs=args.ft_epochs, patience=None, class_names=names,
                                 whiten=whiten, time_location=tl, seed=args.seed,
                                 overwrite=True, progress=False)
                    m = json.loads((work / "head" / "metrics.json").read_text())
                    ft[key] = {"mean_iou": m["best"]["mean_iou"],
                               "seconds": time.perf_counter() - t0}
                    print(key, ft[key])
        result["finetune"] = ft

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str))
    print(report(result))
    rows = [[str(h["epoch"]), f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}",
             f"{h['seconds']:.1f}"] for h in history]
    print(_table(rows, ["epoch", "train loss", "val loss", "s"]))
    verdict = "PASS" if last <= 0.5 * first else "FAIL"
    print(f"acceptance (last val loss <= 0.5 x epoch 1): {verdict}; results in {args.results}")


if __name__ == "__main__":
    main()
