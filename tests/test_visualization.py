"""Prototype interpretability tools (protoseg.visualization, tools/visualize_prototypes.py,
tools/inspect_prototypes.py) on the toy model trained by the ``trained_toy_checkpoint`` fixture:
every picture is written as PNG and its content checked (size, not blank, the expected colours
where they belong)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from protoseg.visualization import (
    build_cfg,
    compute_class_maps,
    embed_image,
    embedding_view,
    health_report,
    labels_to_grid,
    load_model,
    load_prototypes,
    plot_assignment,
    plot_similarity_heatmaps,
    project_2d,
    prototype_colors,
    prototype_memory,
    prototype_usage,
    read_dataset_sample,
    save_figure,
)
from protoseg.visualization.prototype_maps import LEGEND_WIDTH, assignment_image

from conftest import REPO, TOY_CONFIGS, load_script, toy_cfg

CONFIG = TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"
VAL = "toy_test_val"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is fastest, and a second thread on a shared CPU can make every
    convolution wait for a descheduled worker (measured 50x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_model(trained_toy_checkpoint):
    cfg, path = trained_toy_checkpoint
    cfg = build_cfg(str(CONFIG), ["MODEL.WEIGHTS", str(path), "DATASETS.TEST", (VAL,)])
    return cfg, load_model(cfg)


@pytest.fixture(scope="module")
def sample(toy_model):
    """(image RGB, labels, class id) of the val image with the largest single-class region
    among the first 8, the class being that region's."""
    best = None
    for d in DatasetCatalog.get(VAL)[:8]:
        image, labels = read_dataset_sample(d, "RGB")
        counts = np.bincount(labels[labels != 255].ravel(), minlength=8)
        if best is None or counts.max() > best[3]:
            best = (image, labels, int(counts.argmax()), int(counts.max()))
    return best[:3]


def _png(path):
    arr = np.asarray(Image.open(path).convert("RGB"))
    assert arr.std() > 20, f"{path} looks blank (std {arr.std():.1f})"
    return arr


def _chroma(rgb):
    rgb = rgb.astype(np.int32)
    return rgb.max(-1) - rgb.min(-1)


def _load_tool(name):
    return load_script(name, REPO / "tools" / f"{name}.py")


def _tool_env(toy_dataset):
    env = dict(os.environ)
    env["DETECTRON2_DATASETS"] = str(Path(toy_dataset).parent)  # toy_scenes_sem_seg_* -> the fixture's data
    env["OMP_NUM_THREADS"] = "1"  # see one_thread
    env["MPLBACKEND"] = "Agg"
    return env


def test_embed_image_matches_the_model(toy_model, sample):
    cfg, model = toy_model
    image, _, _ = sample
    out = embed_image(model, cfg, image)
    memory = prototype_memory(model)
    assert out.embeddings.shape == (memory.dim, 16, 16)  # 128 px at stride 8
    assert torch.allclose(out.embeddings.norm(dim=0), torch.ones(16, 16), atol=1e-4)
    assert out.info.original_size == (128, 128) and out.info.valid_grid_size == (16, 16)
    with torch.no_grad():
        logits = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))}])[0]["sem_seg"]
    assert out.prediction.shape == (128, 128)
    assert (out.prediction == logits.argmax(0).numpy()).mean() > 0.999


def test_parametric_model_is_refused():
    cfg = toy_cfg("parametric_r18-d8_fcn_toy.yaml")
    with pytest.raises(ValueError, match="no prototype memory"):
        prototype_memory(build_model(cfg))


def test_assignment_map_colours_only_the_class(toy_model, sample, tmp_path):
    cfg, model = toy_model
    image, labels, c = sample
    memory = prototype_memory(model)
    out = embed_image(model, cfg, image)
    maps = compute_class_maps(out, memory, c, labels)
    k = memory.num_prototypes
    assert maps.similarities.shape == (k, 128, 128)
    assert np.abs(maps.similarities).max() <= 1.0 + 1e-4  # cosine
    assert (maps.mask == (labels == c)).all() and maps.counts.sum() == maps.mask.sum()
    assert ((maps.assignment >= 0) == maps.mask).all()

    colors = prototype_colors(k)
    assert len({tuple(col) for col in colors}) == k and (_chroma(colors) > 200).all()
    flat = assignment_image(image, maps, shade=False)
    assert (flat[maps.mask] == colors[maps.assignment[maps.mask]]).all()
    assert (_chroma(flat[~maps.mask]) == 0).all()  # dimmed grey image elsewhere
    shaded = assignment_image(image, maps)
    inside = shaded[maps.mask].astype(np.float64)
    direction = inside / inside.max(1, keepdims=True)
    expected = colors[maps.assignment[maps.mask]] / 255.0
    assert np.abs(direction - expected).max() < 0.03  # same hue, brightness = similarity
    assert (_chroma(shaded[~maps.mask]) == 0).all()

    # The PNG: size, content, and the prototype colours inside the class's pixels only.
    panel, dpi = 3.0, 100
    fig, (vis,) = plot_assignment(image, maps, "toy", panel_size=panel, dpi=dpi)
    assert (vis == shaded).all()
    png = _png(save_figure(fig, str(tmp_path / "assignment.png")))
    width, height = panel + 0.2 + LEGEND_WIDTH, 2 * panel + 0.6
    assert png.shape == (round(height * dpi), round(width * dpi), 3)
    x0, y0, side = round(0.1 * dpi), round((height - 0.1 - panel) * dpi), round(panel * dpi)
    crop = png[y0 + 3 : y0 + side - 3, x0 + 3 : x0 + side - 3]  # the assignment panel, inside its frame
    index = ((np.arange(crop.shape[0]) + 3) * 128 // side, (np.arange(crop.shape[1]) + 3) * 128 // side)
    mask = maps.mask[np.ix_(*index)]
    coloured = _chroma(crop) > 40
    from scipy.ndimage import binary_dilation, binary_erosion

    assert not (coloured & ~binary_dilation(mask, iterations=3)).any(), "prototype colours outside the class"
    core = binary_erosion(mask, iterations=3)
    assert coloured[core].mean() > 0.99, "class pixels without a prototype colour"
    for kk in np.flatnonzero(maps.counts > 200):  # every well-used prototype's hue is in the panel
        hue = colors[kk] / 255.0
        px = crop[core].astype(np.float64)
        dirs = px / np.maximum(px.max(1, keepdims=True), 1)
        assert (np.abs(dirs - hue).max(1) < 0.05).sum() > 50, f"prototype {kk} colour missing"


def test_similarity_heatmaps_png(toy_model, sample, tmp_path):
    import matplotlib

    cfg, model = toy_model
    image, _, c = sample
    memory = prototype_memory(model)
    maps = compute_class_maps(embed_image(model, cfg, image), memory, c)  # predicted pixels
    assert not maps.from_labels and maps.counts.sum() == maps.mask.sum()
    fig = plot_similarity_heatmaps(image, maps, "toy", ncols=4, panel_size=2.0, dpi=80)
    png = _png(save_figure(fig, str(tmp_path / "heatmaps.png")))
    nrows = -(-(memory.num_prototypes + 1) // 4)
    assert png.shape == (round((nrows * 2.0 + 0.5) * 80), round((4 * 2.0 + 0.8) * 80), 3)
    # the heat map panels are drawn with viridis: most strongly coloured pixels lie on it
    lut = (matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float64)
    px = png.reshape(-1, 3)[_chroma(png.reshape(-1, 3)) > 60][::7].astype(np.float64)
    dist = np.sqrt(((px[:, None, :] - lut[None]) ** 2).sum(-1)).min(1)
    assert len(px) > 5000 and (dist < 12).mean() > 0.8
    # the nearest-prototype similarity is higher on the predicted class than elsewhere
    if 0 < maps.mask.mean() < 1:
        near = maps.nearest_similarity
        assert near[maps.mask].mean() > near[~maps.mask].mean()


def test_embedding_view_png(toy_model, tmp_path):
    cfg, model = toy_model
    meta = MetadataCatalog.get(VAL)
    fig, result = embedding_view(
        model, cfg, DatasetCatalog.get(VAL)[:6], meta.stuff_classes, meta.stuff_colors, classes=[0, 3],
        method="pca", num_pixels=600, seed=0,
    )
    k = prototype_memory(model).num_prototypes
    assert result["pixel_xy"].shape == (600, 2) and result["proto_xy"].shape == (2 * k, 2)
    assert set(result["proto_classes"].tolist()) == {0, 3}
    png = _png(save_figure(fig, str(tmp_path / "embedding.png")))
    assert png.shape == (600, 750, 3)
    colors = np.asarray(meta.stuff_colors)
    plot_area = png[20:-20, 25:560].astype(np.int32)  # the axes (the legend is to the right)
    for cls in np.unique(result["pixel_labels"]):
        if (result["pixel_labels"] == cls).sum() < 15:
            continue
        hits = (np.abs(plot_area - colors[cls]).max(-1) <= 6).sum()
        assert hits > 20, f"class {cls} colour {colors[cls]} missing from the plot ({hits} px)"
    assert ((plot_area.max(-1) < 40).sum()) > 100  # black edges of the prototype markers
    # same seed, same subsample and projection
    _, again = embedding_view(
        model, cfg, DatasetCatalog.get(VAL)[:6], meta.stuff_classes, meta.stuff_colors, classes=[0, 3],
        method="pca", num_pixels=600, seed=0,
    )
    assert np.allclose(again["pixel_xy"], result["pixel_xy"], atol=1e-4)
    with pytest.raises(ValueError, match="method"):
        project_2d(np.zeros((10, 4)), "umap")


def _synthetic_checkpoint(path, collapsed_class=None, c=4, k=5, d=16):
    g = torch.Generator().manual_seed(0)
    protos = torch.nn.functional.normalize(torch.randn(c, k, d, generator=g), dim=-1)
    if collapsed_class is not None:
        protos[collapsed_class] = protos[collapsed_class, :1].expand(k, d)
    torch.save({"model": {"backbone.stem.weight": torch.zeros(1), "sem_seg_head.memory.prototypes": protos},
                "iteration": 10}, path)
    return path


def test_health_report_flags_collapse(tmp_path):
    bad = load_prototypes(_synthetic_checkpoint(tmp_path / "bad.pth", collapsed_class=2))
    report = health_report(bad, collapse_threshold=0.99)
    assert report.collapsed.tolist() == [False, False, True, False]
    assert report.mean_cosine[2] == pytest.approx(1.0, abs=1e-6)
    assert len(report.warnings) == 1 and report.warnings[0].startswith("collapsed: class 2")
    good = health_report(load_prototypes(_synthetic_checkpoint(tmp_path / "good.pth")))
    assert not good.collapsed.any() and not good.warnings
    assert np.abs(good.mean_cosine).max() < 0.5
    # a plain state dict works too; a checkpoint without prototypes is an error
    torch.save({"sem_seg_head.memory.prototypes": bad}, tmp_path / "plain.pth")
    assert torch.equal(load_prototypes(tmp_path / "plain.pth"), bad)
    torch.save({"model": {"sem_seg_head.classifier.weight": torch.zeros(3)}}, tmp_path / "none.pth")
    with pytest.raises(ValueError, match="prototype"):
        load_prototypes(tmp_path / "none.pth")

    tool = _load_tool("inspect_prototypes")
    out_dir = tmp_path / "report"
    assert tool.main([str(tmp_path / "bad.pth"), "--output-dir", str(out_dir)]) == 0
    assert tool.main([str(tmp_path / "bad.pth"), "--fail-on-collapse"]) == 2
    assert tool.main([str(tmp_path / "good.pth"), "--fail-on-collapse"]) == 0
    assert tool.main([str(tmp_path / "bad.pth"), "--collapse-threshold", "1.5", "--fail-on-collapse"]) == 0
    saved = json.loads((out_dir / "prototype_health.json").read_text())
    assert [row["collapsed"] for row in saved["classes"]] == [False, False, True, False]
    assert len((out_dir / "prototype_health.csv").read_text().strip().splitlines()) == 1 + 4


def test_usage_counts_sum_to_counted_pixels(toy_model):
    cfg, model = toy_model
    memory = prototype_memory(model)
    dicts = DatasetCatalog.get(VAL)[:4]
    counts, pixels = prototype_usage(model, cfg, dicts)
    assert counts.shape == (memory.num_classes, memory.num_prototypes)
    assert (counts.sum(1) == pixels).all()
    expected = np.zeros(memory.num_classes, dtype=np.int64)  # labelled cells of the embedding grids
    for d in dicts:
        image, labels = read_dataset_sample(d, "RGB")
        out = embed_image(model, cfg, image)
        grid = labels_to_grid(labels, out.info)[: out.info.valid_grid_size[0], : out.info.valid_grid_size[1]]
        expected += np.bincount(grid[grid < memory.num_classes].ravel(), minlength=memory.num_classes)
    assert (pixels == expected).all() and pixels.sum() > 0
    correct, correct_pixels = prototype_usage(model, cfg, dicts, correct_only=True)
    assert (correct <= counts).all() and (correct.sum(1) == correct_pixels).all()
    report = health_report(memory.prototypes, counts=counts)
    for c, unused in enumerate(report.unused):
        assert unused == ([int(i) for i in np.flatnonzero(counts[c] == 0)] if pixels[c] else [])


def test_tools_end_to_end(trained_toy_checkpoint, toy_dataset, toy_model, tmp_path):
    _, ckpt = trained_toy_checkpoint
    cfg, model = toy_model
    env = _tool_env(toy_dataset)
    image = sorted((Path(toy_dataset) / "images" / "validation").glob("*.jpg"))[0]
    names = MetadataCatalog.get(VAL).stuff_classes
    prediction = embed_image(model, cfg, np.asarray(Image.open(image).convert("RGB"))).prediction
    class_id = int(np.bincount(prediction.ravel()).argmax())  # the class the model predicts most here
    name = names[class_id]

    def run(*args):
        proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    maps_dir = tmp_path / "maps"
    run("tools/visualize_prototypes.py", "maps", "--config-file", CONFIG, "--input", image, "--class", name,
        "--output", maps_dir, "--opts", "MODEL.WEIGHTS", ckpt)
    for suffix, shape in (("assignment", (660, 570)), ("heatmaps", (710, 960))):
        png = _png(maps_dir / f"{image.stem}_{name}_{suffix}.png")
        assert png.shape[:2] == shape, (suffix, png.shape)
    raw = np.asarray(Image.open(maps_dir / f"{image.stem}_{name}_assignment_map.png").convert("RGB"))
    assert raw.shape == (128, 128, 3)
    coloured = _chroma(raw) > 0  # prototype colours exactly on the predicted pixels of the class
    assert np.mean(coloured != (prediction == class_id)) < 0.01 and coloured.sum() > 0

    emb_png = tmp_path / "embedding.png"
    run("tools/visualize_prototypes.py", "embedding", "--config-file", CONFIG, "--dataset", "toy_scenes_sem_seg_val",
        "--num-images", 3, "--num-pixels", 400, "--classes", names[0], "1", "--method", "tsne", "--output", emb_png,
        "--opts", "MODEL.WEIGHTS", ckpt)
    png = _png(emb_png)
    assert png.shape == (600, 750, 3)
    assert (np.abs(png.astype(np.int32) - np.asarray(MetadataCatalog.get(VAL).stuff_colors[0])).max(-1) <= 6).sum() > 20

    out_dir = tmp_path / "health"
    text = run("tools/inspect_prototypes.py", ckpt, "--config-file", CONFIG, "--dataset", "toy_scenes_sem_seg_val",
               "--num-images", 4, "--output-dir", out_dir)
    assert "mean within-class pairwise cosine" in text and "pixels per prototype" in text
    saved = json.loads((out_dir / "prototype_health.json").read_text())
    assert saved["num_classes"] == 8 and saved["usage"]["images"] == 4
    assert [row["class"] for row in saved["classes"]] == list(names)
    assert all(row["pixels"] == sum(row[f"count_{k}"] for k in range(saved["num_prototypes"]))
               for row in saved["classes"])


# ---- tools/visualize_prototypes.py maps: images of a registered dataset, wherever it is ------------

@pytest.fixture
def untrained_weights(tmp_path):
    path = tmp_path / "untrained.pth"
    torch.save({"model": build_model(toy_cfg()).state_dict()}, path)
    return path


def test_maps_reads_the_images_of_a_dataset_by_name(toy_dataset, untrained_weights, tmp_path, monkeypatch):
    """The docs' command: --dataset and image file names, from a working directory without ./datasets."""
    monkeypatch.chdir(tmp_path)
    tool = _load_tool("visualize_prototypes")
    assert tool.main(["maps", "--config-file", str(CONFIG), "--dataset", "toy_test_val", "--input",
                      "toy_val_0000[01].jpg", "--class", "toy00", "--output", "maps",
                      "--opts", "MODEL.WEIGHTS", str(untrained_weights)]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").glob("*_heatmaps.png")) == [
        "toy_val_00000_toy00_heatmaps.png", "toy_val_00001_toy00_heatmaps.png"]
    with pytest.raises(FileNotFoundError, match=r"'toy_val_9\*\.jpg' matches no image file name of toy_test_val"):
        tool.main(["maps", "--config-file", str(CONFIG), "--dataset", "toy_test_val", "--input", "toy_val_9*.jpg",
                   "--class", "toy00", "--output", "maps", "--opts", "MODEL.WEIGHTS", str(untrained_weights)])


def test_maps_names_detectron2_datasets_when_a_path_is_missing(untrained_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    tool = _load_tool("visualize_prototypes")
    with pytest.raises(FileNotFoundError) as error:
        tool.main(["maps", "--config-file", str(CONFIG), "--input", "datasets/toy_scenes/images/validation/a.jpg",
                   "--class", "toy00", "--output", "maps", "--opts", "MODEL.WEIGHTS", str(untrained_weights)])
    message = str(error.value)
    assert f"relative to {tmp_path}" in message and f"DETECTRON2_DATASETS is '{tmp_path / 'data'}'" in message
    assert "--dataset NAME" in message
