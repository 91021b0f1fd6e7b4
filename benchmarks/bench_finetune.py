"""Fine-tuning benchmark: synth -> chip -> finetune a segmentation head on a frozen encoder.

Records the per-epoch validation curve (held-out chip locations) and the speed-up of the
token cache: epoch time with cached encoder tokens vs re-encoding every chip every epoch
(the baseline, measured in the same run on the same data).

    python benchmarks/bench_finetune.py                 # size 1024, chip 64, 6 dates, 10 epochs
    python benchmarks/bench_finetune.py --quick         # size 256, 6 dates, 5 epochs
    python benchmarks/bench_finetune.py --fewshot       # few-shot curve (benchmarks/fewshot.py)

``--fewshot`` writes held-out mIoU and boundary F1 against the number of labelled chip
locations, for ``--fewshot-models`` on the ``patches`` and ``blocks`` layouts, each beside
the per-pixel baseline of the same run, between the few-shot markers of the results file.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

#: Everything after this line in the results file is kept when the benchmark rewrites it.
KEEP_MARKER = "<!-- bench_finetune.py keeps everything below this line -->\n"
FEWSHOT_START = "<!-- fewshot: start (bench_finetune.py --fewshot) -->\n"
FEWSHOT_END = "<!-- fewshot: end -->\n"
#: layout name -> land-cover cell size of the synthetic scene
LAYOUTS = {"patches": 64, "blocks": 128}


def fewshot(args: argparse.Namespace) -> None:
    """The few-shot curve: held-out mIoU / boundary F1 vs labelled chip locations."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fewshot import encoder_for, make_scene, run_fewshot

    raw: list[dict] = []
    if args.fewshot_from:  # rebuild the table from the JSON lines of earlier runs
        for log_file in args.fewshot_from:
            raw += [json.loads(line) for line in Path(log_file).read_text().splitlines()
                    if line.startswith("{")]
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="bench_fewshot_"))
        sizes = [None if v == "all" else int(v) for v in args.fewshot_sizes.split(",")]
        for layout in args.fewshot_layouts.split(","):
            scene = make_scene(work / layout, block=LAYOUTS[layout], size=args.fewshot_size,
                               n_dates=args.n_dates, seed=args.seed)
            for model in args.fewshot_models.split(","):
                encoder = encoder_for(model)
                for n in sizes:
                    res = run_fewshot(scene, encoder, n,
                                      work / layout / f"{model}_{n or 'all'}", seed=args.seed)
                    res.update(layout=layout, model=model)
                    raw.append(res)
                    print(json.dumps(res), flush=True)
    rows = []
    for res in raw:
        h, b = res["head"], res["baseline"]
        ratio = h["miou"] / max(b["miou"], 1e-9)
        rows.append([res["layout"], res["model"], str(res["n"]), str(res["train_locations"]),
                     _fmt(h["miou"]), _fmt(b["miou"]), f"{ratio:.2f}", _fmt(h["bf1"]),
                     _fmt(b["bf1"]), _fmt(res["val_miou"]), str(res["best_epoch"]),
                     _fmt(res["seconds"], 0)])
    table = _table(rows, ["layout", "encoder", "labelled chips", "train chips",
                          "head mIoU", "baseline mIoU", "head / baseline", "head BF1",
                          "baseline BF1", "val mIoU", "best epoch", "train s"])
    section = f"""{FEWSHOT_START}## Few-shot curve (`bench_finetune.py --fewshot`)

Scene: `geofm synth` seed {args.seed}, {args.fewshot_size} px, {args.n_dates} dates, chips of
64 px; layouts `patches` (land-cover cells of 64 px) and `blocks` (cells of 128 px).
Labels only on the even squares of a 128 px checkerboard; of their chip locations, the
first column's number is labelled (seeded pick), `finetune` defaults (its own split of
those locations by location: train chips column), `predict` over every chip. Scores on
the **odd (never labelled) squares**, every date, classes seen in the labels: mIoU and
boundary F1 (tolerance 2 px = 20 m) of the head's map and of the per-pixel baseline
(gradient boosting on log reflectance, same training locations). Encoders have random
weights: `tiny` (patch 8, dim 192) and `p16` (Clay architecture, patch 16, dim 96,
depth 3). 1 torch thread per run on a shared 2-core machine (seconds are noisy).

{table}

{FEWSHOT_END}"""
    out = Path(args.results)
    text = out.read_text() if out.exists() else KEEP_MARKER
    if FEWSHOT_START in text and FEWSHOT_END in text:
        head, rest = text.split(FEWSHOT_START, 1)
        text = head + section + rest.split(FEWSHOT_END, 1)[1]
    else:
        text = text.replace(KEEP_MARKER, KEEP_MARKER + section + "\n", 1)
    out.write_text(text)
    print(section)


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024,
                        help="synth side in pixels (1024: 256 chip locations, 64 held out)")
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--n-dates", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--out-channels", type=int, default=16)
    parser.add_argument("--no-whiten", dest="whiten", action="store_false",
                        help="head without the token whitening (the ablation)")
    parser.add_argument("--time-location", default="auto", choices=("auto", "encode", "zero"))
    parser.add_argument("--layers", default=None,
                        help="encoder layers feeding the head (default: finetune's default)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--decoder", default="unet", choices=("unet", "shuffle"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="size 256, 6 dates, 5 epochs")
    parser.add_argument("--fewshot", action="store_true",
                        help="run the few-shot curve instead (benchmarks/fewshot.py)")
    parser.add_argument("--fewshot-size", type=int, default=768)
    parser.add_argument("--fewshot-sizes", default="4,8,16,32,all")
    parser.add_argument("--fewshot-models", default="tiny,p16")
    parser.add_argument("--fewshot-layouts", default="patches,blocks")
    parser.add_argument("--fewshot-from", nargs="+", default=None,
                        help="rebuild the few-shot table from these logs of JSON lines")
    parser.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" /
                                                  "finetune.md"))
    args = parser.parse_args()
    if args.quick:
        args.size, args.n_dates, args.epochs = 256, 6, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fewshot:
        fewshot(args)
        return

    from geofm.chip import chip
    from geofm.finetune import finetune
    from geofm.finetune.layers import DEFAULT_LAYERS
    from geofm.model import load_encoder
    from geofm.synth import synthesize

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_finetune_"))
    t0 = time.perf_counter()
    synth = synthesize(work / "synth", seed=args.seed, size=args.size, n_dates=args.n_dates,
                       chip_size=args.chip_size, overwrite=True)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    chip(synth / "items", work / "root", chip_size=args.chip_size, max_cloud=0.05,
         progress=False, overwrite=True)
    t_chip = time.perf_counter() - t0
    truth = json.loads((synth / "truth.json").read_text())
    names = [truth["classes"][k] for k in sorted(truth["classes"], key=int)]
    labels = sorted((synth / "labels").glob("*.tif"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are the point of this benchmark
        encoder = load_encoder(preset=args.model)

    common = dict(encoder=encoder, batch_size=args.batch_size, lr=args.lr, class_names=names,
                  hidden=args.hidden, out_channels=args.out_channels, whiten=args.whiten,
                  time_location=args.time_location, layers=args.layers, decoder=args.decoder,
                  seed=args.seed, overwrite=True, progress=False)
    t0 = time.perf_counter()
    cached = finetune(work / "root", labels, work / "head", epochs=args.epochs, patience=None,
                      cache="memory", **common)
    t_cached_total = time.perf_counter() - t0
    metrics = json.loads((work / "head" / "metrics.json").read_text())
    history = metrics["history"]
    finetune(work / "root", labels, work / "head_nocache", epochs=1, patience=None,
             cache="none", **common)
    nocache_epoch = json.loads((work / "head_nocache" / "metrics.json").read_text())[
        "history"][0]["seconds"]
    cached_epoch = sum(h["seconds"] for h in history) / len(history)
    encode_s = t_cached_total - sum(h["seconds"] for h in history)
    best = metrics["best"]

    counts = cached.counts
    curve = _table([[str(h["epoch"]), _fmt(h["train_loss"]), _fmt(h["val_loss"]),
                     _fmt(h["mean_iou"]), _fmt(h["macro_f1"]), _fmt(h["pixel_accuracy"]),
                     _fmt(h["seconds"], 2)] for h in history],
                   ["epoch", "train loss", "val loss", "val mIoU", "val macro F1",
                    "val accuracy", "epoch s"])
    per_class = _table([[n, _fmt(i), _fmt(f), str(s)] for n, i, f, s in
                        zip(names, best["iou"], best["f1"], best["support"], strict=True)],
                       ["class", "IoU", "F1", "val pixels"])
    n_ep = args.epochs
    speed = _table([
        ["epoch with token cache (head only)", _fmt(cached_epoch, 2), "1.0x"],
        ["epoch re-encoding every chip (baseline)", _fmt(nocache_epoch, 2),
         f"{nocache_epoch / cached_epoch:.1f}x slower"],
        ["one-off: load labels + encode every chip once + fit the whitening",
         _fmt(encode_s, 2), ""],
        [f"{n_ep} epochs with cache (incl. encoding once)", _fmt(t_cached_total, 1),
         f"speed-up {n_ep * nocache_epoch / t_cached_total:.1f}x"],
        [f"{n_ep} epochs re-encoding (estimated from 1 epoch)", _fmt(n_ep * nocache_epoch, 1),
         "1.0x"],
    ], ["what", "seconds", "ratio"])
    verdict = "PASS" if best["mean_iou"] >= 0.75 else "FAIL"
    report = f"""# Fine-tuning benchmark (`benchmarks/bench_finetune.py`)

Synthetic Sentinel-2 L2A (`geofm synth`, seed {args.seed}, {args.size} px = \
{args.size // args.chip_size}x{args.size // args.chip_size} chips of {args.chip_size} px, \
{args.n_dates} dates) -> `geofm chip` -> `finetune` of a segmentation head on a frozen, \
**random-weight `{args.model}` encoder** (dim {encoder.dim}, patch {encoder.patch_size}); \
labels = the synth land-cover raster (6 classes). Validation = held-out chip *locations* \
({counts['val_locations']} of {counts['locations']}; {counts['train_samples']} train / \
{counts['val_samples']} validation chip-dates: every clear acquisition of a location is a \
sample). Head widths hidden {args.hidden}, out_channels {args.out_channels}, token \
whitening {"on" if args.whiten else "off"}; encoder \
time/location channels: {metrics['encoder'].get('time_location')} (`{args.time_location}`); \
head input: patch tokens of encoder layers `{args.layers or DEFAULT_LAYERS}` \
(0-based blocks, `last` = encoder output), concatenated. \
AdamW lr {args.lr:g}, weight decay 0.01, cosine, batch {args.batch_size}, class weights \
auto, {n_ep} epochs, no early stopping.

Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, \
{torch.get_num_threads()} CPU threads (shared machine: absolute seconds are noisy, the \
ratios are measured in the same run). synth {t_synth:.1f} s, chip {t_chip:.1f} s.

## Acceptance: mean IoU >= 0.75 on held-out locations within 10 epochs: **{verdict}**

Best epoch {metrics['best_epoch']}: mean IoU **{best['mean_iou']:.3f}**, macro F1 \
{best['macro_f1']:.3f}, pixel accuracy {best['pixel_accuracy']:.3f}.
Per-pixel baseline on the same split (gradient boosting on log reflectance): mean IoU \
{_fmt((metrics.get('baseline') or {}).get('mean_iou'))}. Decoder `{args.decoder}`.

### Per-epoch validation curve

{curve}

### Per-class scores at the best epoch

{per_class}

## Token cache speed-up

Every chip is encoded once (eval mode, `torch.inference_mode`) and its tokens kept as
float16; later epochs run only the head. Baseline: the same training with `cache="none"`,
which reads and encodes every chip in every epoch (training and validation).

{speed}
"""
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text() if out.exists() else ""
    # hand-written sections after the marker survive a re-run
    kept = previous.split(KEEP_MARKER, 1)[1] if KEEP_MARKER in previous else ""
    out.write_text(report + "\n" + KEEP_MARKER + kept)
    print(report)
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
