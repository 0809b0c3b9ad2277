#!/usr/bin/env python
"""Pictures of what the prototypes of a trained ProtoSeg model respond to (docs/INTERPRETABILITY.md).

maps: for one class, the closest-prototype assignment map and the per-prototype similarity heat
maps of each input image (the paper's Fig. 3):

    python tools/visualize_prototypes.py maps --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \\
        --dataset toy_scenes_sem_seg_val --input toy_val_00000.jpg --class toy05 --output output/protomaps \\
        --opts MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth

embedding: t-SNE (or PCA) of pixel embeddings of some dataset images with the prototypes
(the paper's Fig. 5):

    python tools/visualize_prototypes.py embedding --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \\
        --dataset toy_scenes_sem_seg_val --num-images 16 --method tsne --output output/embedding_tsne.png \\
        --opts MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth
"""
import argparse
import fnmatch
import glob
import os
import sys

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.utils.logger import setup_logger

import protoseg  # noqa: F401  (registers the model parts and datasets)
from protoseg.data import datasets_root
from protoseg.data.image_io import read_image
from protoseg.data.labels import read_label_map
from protoseg.visualization import (
    build_cfg,
    class_index,
    compute_class_maps,
    embed_image,
    load_model,
    plot_assignment,
    plot_similarity_heatmaps,
    prototype_memory,
    save_figure,
)
from protoseg.visualization.embedding_view import PROJECTIONS, embedding_view

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns):
    """Files, globs and folders -> sorted image paths; error naming a pattern that matches none."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern)) if f.lower().endswith(IMAGE_EXTS)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image{missing_input_hint(pattern)}")
        paths.extend(found)
    return paths


def missing_input_hint(pattern):
    """For a relative path: where it was looked for, and where the registered datasets are read
    from (``$DETECTRON2_DATASETS``, default ./datasets), with the two ways to follow it."""
    if os.path.isabs(os.path.expanduser(pattern)):
        return ""
    root = os.environ.get("DETECTRON2_DATASETS")
    where = f"DETECTRON2_DATASETS is {root!r}" if root else "DETECTRON2_DATASETS is not set"
    return (f" (relative to {os.getcwd()}; the registered datasets are read from {str(datasets_root())!r}, "
            f"{where}: pass --dataset NAME with image file names, e.g. --dataset toy_scenes_sem_seg_val "
            f"--input 'toy_val_0000[01].jpg', or write the path as \"${{DETECTRON2_DATASETS:-datasets}}/...\")")


def dataset_inputs(dataset, patterns):
    """The images of the registered ``dataset`` (where its registration reads them, i.e. under
    ``$DETECTRON2_DATASETS`` for the built-in ones) whose file name matches one of ``patterns``
    (globs of the name, e.g. ``toy_val_0000[367].jpg``), in the dataset's order per pattern."""
    files = [record["file_name"] for record in DatasetCatalog.get(dataset)]
    paths = []
    for pattern in patterns:
        found = [f for f in files if fnmatch.fnmatchcase(os.path.basename(f), pattern)]
        if not found:
            example = os.path.basename(files[0]) if files else "none"
            raise FileNotFoundError(f"--input {pattern!r} matches no image file name of {dataset} "
                                    f"({len(files)} images, e.g. {example!r})")
        paths.extend(found)
    return paths


def class_names_of(cfg, dataset=None):
    """stuff_classes of ``dataset`` (default the first test dataset of cfg), else "class i"."""
    name = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    num = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = MetadataCatalog.get(name).get("stuff_classes", None) if name else None
    if names is None or len(names) != num:
        names = [f"class {i}" for i in range(num)]
    return list(names)


def run_maps(args):
    cfg = build_cfg(args.config_file, args.opts)
    inputs = dataset_inputs(args.dataset, args.input) if args.dataset else expand_inputs(args.input)
    model = load_model(cfg)
    memory = prototype_memory(model)
    names = class_names_of(cfg)
    class_id = class_index(args.class_, names)
    safe = names[class_id].replace(os.sep, "_").replace(" ", "_")
    # brightness from cosine 0 to 1; for the unnormalised distances, from each image's own range
    shade = (0.0, 1.0) if memory.distance == "cosine" else None
    os.makedirs(args.output, exist_ok=True)
    combined = []
    for path in inputs:
        image = read_image(path, format=cfg.INPUT.FORMAT)
        labels = None
        if args.label_dir:
            stem = os.path.splitext(os.path.basename(path))[0]
            label_path = os.path.join(args.label_dir, stem + ".png")
            if not os.path.isfile(label_path):
                raise FileNotFoundError(f"no label map {label_path} for {path}")
            labels = read_label_map(label_path)
        out = embed_image(model, cfg, image)
        maps = compute_class_maps(out, memory, class_id, labels)
        rgb = convert_image_to_rgb(image, cfg.INPUT.FORMAT)
        stem = os.path.splitext(os.path.basename(path))[0]
        base = os.path.join(args.output, f"{stem}_{safe}")
        fig, (vis,) = plot_assignment(rgb, maps, names[class_id], titles=[stem], dpi=args.dpi, similarity_range=shade)
        save_figure(fig, base + "_assignment.png")
        Image.fromarray(vis).save(base + "_assignment_map.png")
        heat = plot_similarity_heatmaps(rgb, maps, names[class_id], distance=memory.distance, dpi=args.dpi)
        save_figure(heat, base + "_heatmaps.png")
        counts = " ".join(str(int(v)) for v in maps.counts)
        source = "labelled" if labels is not None else "predicted"
        print(f"{path}: {int(maps.mask.sum())} {source} px of '{names[class_id]}', per prototype: {counts} "
              f"-> {base}_assignment.png, {base}_assignment_map.png, {base}_heatmaps.png")
        if args.combine:
            combined.append((stem, rgb, maps))
    if args.combine:
        fig, _ = plot_assignment([c[1] for c in combined], [c[2] for c in combined], names[class_id],
                                 titles=[c[0] for c in combined], panel_size=2.6, dpi=args.dpi, similarity_range=shade)
        path = os.path.join(args.output, f"{safe}_assignment_all.png")
        save_figure(fig, path)
        print(f"all {len(combined)} images -> {path}")


def run_embedding(args):
    cfg = build_cfg(args.config_file, args.opts)
    model = load_model(cfg)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if not dataset:
        raise ValueError("no dataset: pass --dataset NAME")
    dicts = DatasetCatalog.get(dataset)
    if args.num_images > 0:
        dicts = dicts[: args.num_images]
    meta = MetadataCatalog.get(dataset)
    names = class_names_of(cfg, dataset)
    colors = meta.get("stuff_colors", None)
    if colors is None:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        colors = [tuple(int(255 * v) for v in cmap(i % 20)[:3]) for i in range(len(names))]
    classes = [class_index(c, names) for c in args.classes] if args.classes else None
    fig, result = embedding_view(
        model, cfg, dicts, names, colors, classes=classes, method=args.method, num_pixels=args.num_pixels,
        seed=args.seed, pixels_of_chosen_classes_only=args.only_classes_pixels, dpi=args.dpi,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_figure(fig, args.output)
    print(f"{len(result['pixel_labels'])} pixels of {len(dicts)} images of {dataset} and "
          f"{len(result['proto_classes'])} prototypes ({args.method}) -> {args.output}")


def get_parser():
    parser = argparse.ArgumentParser(description="Prototype interpretability pictures of a ProtoSeg model")
    sub = parser.add_subparsers(dest="command", required=True)

    maps = sub.add_parser("maps", help="closest-prototype assignment map and similarity heat maps of one class")
    maps.add_argument("--config-file", required=True, metavar="FILE")
    maps.add_argument("--input", nargs="+", required=True,
                      help="image files, globs or folders; with --dataset, image file names (globs) of that dataset")
    maps.add_argument("--dataset", default="", help="registered dataset whose images --input names (read where "
                      "the dataset is registered, under $DETECTRON2_DATASETS for the built-in ones)")
    maps.add_argument("--class", dest="class_", required=True, metavar="NAME_OR_ID", help="class name or id")
    maps.add_argument("--output", required=True, help="output folder")
    maps.add_argument("--label-dir", default="", help="folder of label maps <image stem>.png: use the labelled "
                      "pixels of the class instead of the predicted ones")
    maps.add_argument("--combine", action="store_true",
                      help="also draw the assignment maps of all inputs side by side in <class>_assignment_all.png")
    maps.add_argument("--dpi", type=int, default=100, help="resolution of the figures")
    maps.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    maps.set_defaults(func=run_maps)

    emb = sub.add_parser("embedding", help="2-D projection of pixel embeddings and prototypes")
    emb.add_argument("--config-file", required=True, metavar="FILE")
    emb.add_argument("--dataset", default="", help="registered dataset (default: the config's first DATASETS.TEST)")
    emb.add_argument("--num-images", type=int, default=16, help="first N images of the dataset (0: all)")
    emb.add_argument("--classes", nargs="+", default=None, metavar="NAME_OR_ID",
                     help="classes whose prototypes are drawn (default all)")
    emb.add_argument("--only-classes-pixels", action="store_true", help="draw only the pixels of --classes")
    emb.add_argument("--method", choices=PROJECTIONS, default="tsne")
    emb.add_argument("--num-pixels", type=int, default=2000, help="random pixel subsample (0: all)")
    emb.add_argument("--seed", type=int, default=0)
    emb.add_argument("--output", required=True, help="output PNG")
    emb.add_argument("--dpi", type=int, default=100, help="resolution of the figure")
    emb.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    emb.set_defaults(func=run_embedding)
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="protoseg")
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
