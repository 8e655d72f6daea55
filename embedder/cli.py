"""`embedder`: train the garment embedding model, evaluate it, inspect checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from embedder.choices import Boxes, MapMethod, Mode
from embedder.commands import (
    DataRoot,
    DetectorFile,
    Device,
    Int8,
    Ks,
    Precision,
    QueryBoxes,
    Runtime,
    StorageOption,
    Verbose,
    clean_errors,
    dataset_root,
    echo,
    run_app,
    setup_logging,
)

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Train, evaluate and inspect the garment embedding model.",
)
Root = DataRoot


@app.callback()
def main() -> None:
    """Train, evaluate and inspect the garment embedding model."""


@app.command()
def train(
    root: Root,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics.csv, metrics.png.")],
    backbone: Annotated[str, typer.Option(help="Any timm backbone name.")] = "resnet50",
    img_size: Annotated[int | None, typer.Option(help="[default: the backbone's]")] = None,
    dim: Annotated[int, typer.Option(help="Embedding size.")] = 512,
    pretrained: Annotated[
        str,
        typer.Option(
            help="Backbone init: 'default' (timm ImageNet tag, needs the network), a tag, 'none'."
        ),
    ] = "default",
    weights: Annotated[Path | None, typer.Option(help="Start from this checkpoint.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[
        int, typer.Option(min=2, help="Triplets (reference) or images (online mining) per step.")
    ] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    margin: Annotated[float, typer.Option(help="Triplet margin.")] = 0.5,
    mode: Annotated[
        Mode,
        typer.Option(
            help="reference (consumer/shop/same-subcategory negative), batch-hard or semihard "
            "(item-balanced batches with online mining)."
        ),
    ] = Mode.reference,
    train_stages: Annotated[
        str | None,
        typer.Option(
            help="Backbone stages to train (others frozen, BatchNorm statistics included), e.g. "
            "layer4 or layer3,layer4, or all. [default: layer4 (the reference recipe) from "
            "pretrained weights; all from random weights (--pretrained none)]",
            show_default=False,
        ),
    ] = None,
    per_item: Annotated[int, typer.Option(min=2, help="Images per item in a mined batch.")] = 2,
    workers: Annotated[int, typer.Option(min=0, help="Data loading processes.")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out after its last finished epoch.")
    ] = False,
    k: Ks = "1,5,10,20,50",
    device: Device = "auto",
    precision: Precision = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    nproc_per_node: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train in N processes on this machine (one per GPU; on CPU, gloo) by starting "
            "torchrun; --batch-size stays the global batch. Several machines: run `torchrun "
            "... -m embedder train` with torchrun's own flags.",
        ),
    ] = 1,
    storage_option: StorageOption = None,
    verbose: Verbose = False,
) -> None:
    """Train with triplet loss; each epoch writes a checkpoint, validation top-k, metrics.csv
    and metrics.png. Add --resume to continue an interrupted run; the best epoch
    (validation top-20) is OUT/best.safetensors, the file to pass to `ingest run --weights`."""
    setup_logging(verbose)
    with clean_errors():
        from embedder.distributed import launch, main_process, under_torchrun
        from embedder.storage import parse_options
        from embedder.train import TrainConfig, fit

        launching = nproc_per_node > 1 and not under_torchrun()
        chosen, why = TrainConfig.default_stages(pretrained, weights)
        if train_stages is None and main_process() and not launching:
            typer.echo(f"training stages: {chosen} ({why}; --train-stages to choose)", err=True)
        cfg = TrainConfig(
            root=str(root),
            storage_options=parse_options(storage_option),
            out=str(out),
            backbone=backbone,
            img_size=img_size,
            dim=dim,
            pretrained=pretrained,
            weights=str(weights) if weights else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            margin=margin,
            mode=mode,
            train_stages=train_stages or chosen,
            per_item=per_item,
            device=device,
            precision=precision,
            workers=workers,
            seed=seed,
            ks=tuple(k),
            resume=resume,
        )
        if launching:  # settings that cannot work fail here once, not in every process
            cfg.check(nproc_per_node)
            raise typer.Exit(launch(nproc_per_node, "nproc-per-node"))
        history = fit(cfg, progress=progress)
        if main_process():  # rank 0 reports
            for line in history.lines(out):
                echo(line)


@app.command("train-detector")
def train_detector(
    root: Root,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics.csv, metrics.png.")],
    backbone: Annotated[
        str, typer.Option(help="torchvision ResNet: resnet18, resnet34, resnet50, resnet101.")
    ] = "resnet50",
    img_size: Annotated[
        int, typer.Option(help="Photos are letterboxed to this square (a multiple of 32).")
    ] = 512,
    head: Annotated[
        str,
        typer.Option(
            help="full: torchvision's FCOS layout (256 channels, 4 convolutions, P3-P7; COCO "
            "weights fit it); light: 128 channels, 2 convolutions, P4-P7, for CPUs."
        ),
    ] = "full",
    pretrained: Annotated[
        str,
        typer.Option(
            help="default (torchvision's COCO detection weights for resnet50 --head full, else "
            "the backbone's ImageNet weights; needs the network or torch's cache), coco, "
            "imagenet, or none (random)."
        ),
    ] = "default",
    weights: Annotated[Path | None, typer.Option(help="Start from this detector.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per step (all processes).")] = 16,
    lr: Annotated[
        float | None,
        typer.Option(
            help="AdamW learning rate. [default: 1e-3 from random weights, 2e-4 from pretrained]",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Data loading processes.")] = 2,
    paste: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="The share of training photos given a second garment, of another type, pasted "
            "from another photo with its box (the dataset has one box a photo; a street photo "
            "often shows two garments). 0: none.",
        ),
    ] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out after its last finished epoch.")
    ] = False,
    device: Device = "auto",
    precision: Precision = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    nproc_per_node: Annotated[
        int,
        typer.Option(
            min=1, help="Train in N processes on this machine by starting torchrun (as `train`)."
        ),
    ] = 1,
    storage_option: StorageOption = None,
    verbose: Verbose = False,
) -> None:
    """Train the garment detector (torchvision's FCOS) on the dataset's own boxes: the train
    split's photos of both sources, classes from clothes_type (upper, lower, full body). Each
    epoch writes a checkpoint and the validation box AP at IoU 0.5 and 0.5:0.95 and the mean
    IoU on consumer photos to metrics.csv and metrics.png; the best epoch (AP 0.5:0.95) is
    OUT/best.safetensors, the file to pass as --detector."""
    setup_logging(verbose)
    with clean_errors():
        from embedder.distributed import launch, main_process, under_torchrun
        from embedder.storage import parse_options
        from embedder.train_detector import DetectorConfig, fit_detector

        cfg = DetectorConfig(
            root=str(root),
            out=str(out),
            backbone=backbone,
            img_size=img_size,
            head=head,
            pretrained=pretrained,
            weights=str(weights) if weights else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            device=device,
            precision=precision,
            workers=workers,
            paste=paste,
            seed=seed,
            resume=resume,
            storage_options=parse_options(storage_option),
        )
        if nproc_per_node > 1 and not under_torchrun():
            cfg.check(nproc_per_node)
            raise typer.Exit(launch(nproc_per_node, "nproc-per-node"))
        history = fit_detector(cfg, progress=progress)
        if main_process():
            for line in history.lines(out):
                echo(line)


@app.command()
def evaluate(
    root: Root,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint to evaluate.")] = None,
    backbone: Annotated[
        list[str] | None,
        typer.Option(
            "--backbone",
            "--backbones",
            help="Instead of --weights: compare these timm backbones with --pretrained weights "
            "(repeat the option or separate names with commas).",
        ),
    ] = None,
    pretrained: Annotated[
        str, typer.Option(help="With --backbone: default, a tag or none.")
    ] = "default",
    img_size: Annotated[int | None, typer.Option(help="With --backbone.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    k: Ks = "1,5,10,20,50",
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the top-k curve PNG.")] = None,
    embedding_map: Annotated[
        Path | None,
        typer.Option(help="Write a 2-D map of gallery embeddings coloured by category."),
    ] = None,
    map_method: Annotated[
        MapMethod, typer.Option(help="pca, or tsne (scikit-learn).")
    ] = MapMethod.pca,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0)] = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    int8: Int8 = False,
    boxes: QueryBoxes = Boxes.annotated,
    detector: DetectorFile = None,
    storage_option: StorageOption = None,
    verbose: Verbose = False,
) -> None:
    """Consumer-to-shop retrieval: queries are the split's consumer photos, the gallery its shop
    photos; a query hits at k when a photo of its item is among the first k. Overall and per
    category, with exact k-NN. Through a Qdrant collection (HNSW, filters): `search evaluate`."""
    setup_logging(verbose)
    ks = tuple(k)
    with clean_errors():
        from embedder.evaluate import evaluate_models
        from embedder.plots import embedding_map as draw_map
        from embedder.plots import topk_curve
        from embedder.recipe import DetectorRecipe, ModelRecipe, RunOptions

        root = dataset_root(root, storage_option)
        run = RunOptions(device=device, precision=precision, runtime=runtime, int8=int8)
        models = ModelRecipe.compared(weights, backbone, img_size, pretrained, run, root)
        finder = DetectorRecipe(str(detector), device, precision, runtime) if detector else None
        reports, evaluated = {}, []
        for ev in evaluate_models(
            models,
            root,
            split=split,
            ks=ks,
            batch_size=batch_size,
            workers=workers,
            boxes=boxes.value,
            detector=finder,
        ):
            reports[ev.name] = ev.report
            evaluated.append(ev)
            echo(f"{ev.name}: {ev.report.queries} queries, gallery {ev.report.gallery} ({split})")
            echo(ev.report.boxes_line())
            for line in ev.report.table():
                echo(line)
        if embedding_map and len(evaluated) == 1:
            labels = evaluated[0].vectors["gallery_table"]["category"]
            draw_map(evaluated[0].vectors["gallery"], labels, embedding_map, map_method.value)
            echo(f"embedding map: {embedding_map}")
        if plot:
            topk_curve({n: r.overall for n, r in reports.items()}, plot)
            echo(f"top-k curve: {plot}")
        if as_json:
            as_json.write_text(json.dumps({n: r.to_json() for n, r in reports.items()}, indent=1))


@app.command()
def project(
    root: Root,
    weights: Annotated[Path, typer.Option(help="Checkpoint to add the projection to.")],
    out: Annotated[Path, typer.Option(help="Where to write the new checkpoint.")],
    dim: Annotated[int, typer.Option(min=1, help="Projected size, e.g. 128.")] = 128,
    whiten: Annotated[bool, typer.Option(help="Whiten (unit variance per component).")] = False,
    split: Annotated[str, typer.Option(help="Split to measure the effect on.")] = "test",
    k: Ks = "1,5,10,20,50",
    workers: Annotated[int, typer.Option(min=0)] = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    storage_option: StorageOption = None,
    verbose: Verbose = False,
) -> None:
    """Fit PCA (or whitening) of the embeddings on the train split's shop images, build it into
    a new checkpoint (applied at embed time by ingest and search), and print top-k accuracy on
    --split before and after."""
    setup_logging(verbose)
    ks = tuple(k)
    with clean_errors():
        from embedder.checkpoint import save_checkpoint
        from embedder.evaluate import evaluate_models
        from embedder.inference import Encoder
        from embedder.model import build_model
        from embedder.projection import fit_on_gallery, with_projection
        from embedder.recipe import Built

        root = dataset_root(root, storage_option)
        model = build_model(weights=str(weights))
        encoder = Encoder(model, device, precision)
        mean, matrix = fit_on_gallery(encoder, root, dim, whiten, workers)
        projected = with_projection(model, mean, matrix, whiten)
        spec = save_checkpoint(projected, out, projection_of=str(weights))
        after = Encoder(projected, device, precision)
        before_after = [
            (f"{model.spec.out_dim}-d", Built(encoder)),
            (f"{dim}-d {'whitened' if whiten else 'PCA'}", Built(after)),
        ]
        for ev in evaluate_models(before_after, root, split=split, ks=ks, workers=workers):
            overall = ev.report.overall.items()
            echo(f"{ev.name}: " + ", ".join(f"top-{k} {v:.3f}" for k, v in overall))
        echo(f"wrote {out} ({spec.backbone}, {dim}-d, weights {spec.weights})")


@app.command()
def export(
    weights: Annotated[
        Path, typer.Option(help="The checkpoint to export: an embedder's, or a detector's.")
    ],
    int8: Int8 = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="With --int8: a folder of your own photos (a few hundred are read); a dataset "
            "folder with Eval/ also checks top-1 and top-20 accuracy against fp32."
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Export a checkpoint's model (an embedder, or a garment detector) to OpenVINO for plain
    CPUs (normalisation built in, uint8 pixels in), once, into the model cache where `search`,
    `search serve`, `ingest run` and `embedder evaluate` find it (FASHION_RETRIEVAL_CACHE moves
    it, e.g. into a Docker image). With --int8, also the int8 embedder, kept only if it finds
    what fp32 finds."""
    setup_logging(verbose)
    with clean_errors():
        import json
        import time

        from embedder.checkpoint import kind_of
        from embedder.recipe import DetectorRecipe, ModelRecipe
        from embedder.runtime import cache_unwritable
        from embedder.spec import DetectorSpec
        from embedder.storage import cache_dir

        detector = kind_of(weights) is DetectorSpec  # a garment detector: exported as it is
        if int8 and detector:
            raise ValueError("--int8 is for embedders; a detector is exported as it is")
        if int8 and calibration is None:
            raise ValueError("--int8 needs --calibration DIR: photos of your own data")
        if (why := cache_unwritable()) is not None:  # an export kept nowhere is no export
            raise ValueError(
                f"cannot write the model cache {str(cache_dir())!r} ({why.strerror or why}): "
                f"set FASHION_RETRIEVAL_CACHE to a folder that can be written"
            )
        started = time.perf_counter()
        if detector:
            encoder = DetectorRecipe(str(weights), runtime="openvino").build().raw
        else:
            calibrate = str(calibration) if calibration else None
            recipe = ModelRecipe(
                weights=str(weights), runtime="openvino", int8=int8, calibration=calibrate
            )
            encoder = recipe.build()
        spec = encoder.spec
        echo(
            f"{spec.backbone} (weights {spec.weights}) for OpenVINO, "
            f"{'int8' if int8 else 'fp32'}: {encoder.path} "
            f"({time.perf_counter() - started:.1f} s)"
        )
        info_file = encoder.path.with_suffix(".json")
        if int8 and info_file.is_file():
            figures = {k: v for k, v in json.loads(info_file.read_text()).items() if k != "spec"}
            echo("int8 check: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


@app.command()
def info(weights: Annotated[Path, typer.Argument(help="A .safetensors checkpoint.")]) -> None:
    """Print what a checkpoint records: backbone, dim, image size, normalisation, metrics."""
    with clean_errors():
        from embedder.checkpoint import read_metadata

        spec, extra = read_metadata(weights)
        for key, value in spec.__dict__.items():
            if key != "extra":
                echo(f"{key}: {value}")
        for key, value in extra.items():
            echo(f"{key}: {value}")


def console() -> None:
    """Console script `embedder`: usage errors as one line (embedder.commands.run_app)."""
    run_app(app)
