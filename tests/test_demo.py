"""demo/demo.py: pictures of the predictions, label maps (8- and 16-bit), videos, errors."""
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from protoseg.data.image_io import ImageReadError

from conftest import REPO, TOY_CONFIGS, load_script, toy_cfg
from log_records import Records


demo = load_script("protoseg_demo", REPO / "demo" / "demo.py")
predictor = sys.modules["predictor"]  # demo/predictor.py, imported by demo.py


@pytest.fixture(scope="module")
def demo_args(trained_toy_checkpoint):
    _, weights = trained_toy_checkpoint
    return ["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"),
            "--opts", "MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "('toy_test_val',)"]


def with_opts(demo_args, *args):
    i = demo_args.index("--opts")
    return demo_args[:i] + list(args) + demo_args[i:]


def model_prediction(cfg, weights, path):
    """The label map of the evaluation path (DatasetMapper reads images in cfg.INPUT.FORMAT)."""
    from protoseg.engine import Trainer
    from protoseg.checkpoint import ProtoSegCheckpointer

    model = Trainer.build_model(cfg)
    ProtoSegCheckpointer(model).load(str(weights))
    model.eval()
    image = read_image(path, format=cfg.INPUT.FORMAT)
    inputs = {"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32")),
              "height": image.shape[0], "width": image.shape[1]}
    with torch.no_grad():
        return model([inputs])[0]["sem_seg"].argmax(0).numpy()


def test_picture_and_label_map_of_a_toy_image(demo_args, trained_toy_checkpoint, toy_dataset, tmp_path):
    cfg, weights = trained_toy_checkpoint
    image_path = str(sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[0])
    out = tmp_path / "vis" / "pic.png"
    demo.main(with_opts(demo_args, "--input", image_path, "--output", str(out), "--alpha", "1", "--save-label-map"))

    pic = np.array(Image.open(out).convert("RGB"))
    assert min(pic.shape[:2]) >= 512  # the 128x128 image is drawn enlarged
    assert pic.std() > 10

    labels = np.array(Image.open(tmp_path / "vis" / "pic_labels.png"))
    assert Image.open(tmp_path / "vis" / "pic_labels.png").mode == "L" and labels.shape == (128, 128)
    # the model sees the channels it was trained on (DefaultPredictor converts BGR -> cfg.INPUT.FORMAT)
    np.testing.assert_array_equal(labels, model_prediction(cfg, weights, image_path))

    colors = MetadataCatalog.get("toy_test_val").stuff_colors
    classes, counts = np.unique(labels, return_counts=True)
    for c, n in zip(classes, counts):
        if n < 0.02 * labels.size:
            continue
        close = (np.abs(pic.astype(int) - np.array(colors[c])).max(axis=-1) <= 3).mean()
        assert close > 0.25 * n / labels.size, f"colour of class {c} missing from the picture"


def test_video_gets_every_frame_drawn_at_the_same_fps(demo_args, toy_dataset, tmp_path):
    image = cv2.imread(str(sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[1]))
    src = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*"MJPG"), 7.0, (64, 64))
    assert writer.isOpened()
    for i in range(5):
        writer.write(cv2.resize(np.roll(image, 8 * i, axis=1), (64, 64)))
    writer.release()

    out = tmp_path / "out" / "clip.mp4"
    demo.main(with_opts(demo_args, "--video-input", src, "--output", str(out)))
    video = cv2.VideoCapture(str(out))
    assert video.isOpened()
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    video.release()
    assert len(frames) == 5 and frames[0].shape == (512, 512, 3) and frames[0].std() > 10


def test_16bit_label_map_round_trip(tmp_path):
    label_map = (np.arange(40 * 30).reshape(30, 40) % 847).astype(np.int64)
    label_map[0, 0] = 800
    path = tmp_path / "labels.png"
    predictor.save_label_map(str(path), label_map, num_classes=847)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I;16B", "I") and im.info.get("bits", 16) == 16
        np.testing.assert_array_equal(np.array(im), label_map)
    read = predictor.read_label_map(str(path))
    assert read.dtype == np.uint16 and read[0, 0] == 800
    np.testing.assert_array_equal(read, label_map)
    with pytest.raises(ValueError, match="labels.png"):
        predictor.save_label_map(str(path), label_map, num_classes=256)


def _bare_demo(labels=True, area_threshold=None):
    """A SemSegDemo without a model, to test the drawing."""
    d = predictor.SemSegDemo.__new__(predictor.SemSegDemo)
    d.metadata = predictor.demo_metadata("toy_test_val", 8)
    d.alpha, d.labels, d.area_threshold = 1.0, labels, area_threshold
    return d


def test_drawing_labels_large_regions_only_and_skips_ignore(toy_dataset, monkeypatch):
    texts = []
    original = Visualizer.draw_text
    monkeypatch.setattr(Visualizer, "draw_text", lambda self, text, *a, **k: texts.append(text) or original(self, text, *a, **k))
    image = np.full((128, 128, 3), 128, np.uint8)
    label_map = np.full((128, 128), 255, np.int64)  # ignore: not drawn
    label_map[:, :64] = 3
    label_map[100:102, 100:102] = 5  # 4 pixels: coloured, not labelled
    drawn = _bare_demo().draw(image, label_map)
    assert texts == ["toy03"]
    big = cv2.resize(drawn, (128, 128), interpolation=cv2.INTER_NEAREST)
    colors = MetadataCatalog.get("toy_test_val").stuff_colors
    assert (np.abs(big[10:120, 70:95].astype(int) - 128).max() <= 1)  # ignore region left as it was
    assert np.abs(big[50, 30].astype(int) - colors[3]).max() <= 3
    assert np.abs(big[101, 101].astype(int) - colors[5]).max() <= 40

    texts.clear()
    _bare_demo(area_threshold=2).draw(image, label_map)
    assert sorted(texts) == ["toy03", "toy05"]
    texts.clear()
    _bare_demo(labels=False).draw(image, label_map)
    assert texts == []


def test_metadata_without_colours_gets_fixed_colours():
    name = "demo_test_no_colours"
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"])
    try:
        first, second = predictor.demo_metadata(name, 3), predictor.demo_metadata(name, 3)
        assert first.stuff_classes == ["a", "b", "class_2"]
        assert first.stuff_colors == second.stuff_colors and len(first.stuff_colors) == 3
        assert not hasattr(MetadataCatalog.get(name), "stuff_colors")
    finally:
        MetadataCatalog.remove(name)


def test_inputs_and_outputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ("a/x.jpg", "a/y.png", "a/notes.txt", "b/x.jpg"):
        (tmp_path / p).write_bytes(b"")
    assert demo.expand_inputs([str(tmp_path / "a")]) == [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "a" / "y.png")]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        demo.expand_inputs([str(tmp_path / "nothing_here*.jpg")])
    assert demo.output_paths(str(tmp_path / "one.png"), ["a/x.jpg"]) == [str(tmp_path / "one.png")]
    assert demo.output_paths(str(tmp_path / "dir"), ["a/x.jpg"]) == [str(tmp_path / "dir" / "x.png")]
    with pytest.raises(ValueError, match="2 inputs"):
        demo.output_paths(str(tmp_path / "one.png"), ["a/x.jpg", "a/y.png"])
    with pytest.raises(ValueError, match="x.jpg"):
        demo.output_paths(str(tmp_path / "out"), [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")])


def test_unreadable_image_is_named(demo_args, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="broken.jpg"):
        demo.main(with_opts(demo_args, "--input", str(bad), "--output", str(tmp_path / "out")))


# ---- weights and inputs are checked before anything is drawn -----------------------------------
@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory):
    """{config name: a checkpoint of the untrained toy model of that config}: given weights that
    load fast."""
    from detectron2.modeling import build_model

    out = tmp_path_factory.mktemp("untrained")
    paths = {}
    for name in ("protoseg_r18-d8_fcn_toy.yaml", "parametric_r18-d8_fcn_toy.yaml"):
        torch.save({"model": build_model(toy_cfg(name)).state_dict()}, out / f"{name}.pth")
        paths[name] = out / f"{name}.pth"
    return paths


def demo_argv(config, *args, opts=()):
    return ["--config-file", str(TOY_CONFIGS / config), *args, "--opts", "DATASETS.TEST", "('toy_test_val',)", *opts]


@pytest.fixture
def no_model(monkeypatch):
    """Building the model fails the test: what must fail before it does."""
    def build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(demo, "SemSegDemo", build)


def first_val_image(toy_dataset):
    return str(sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[0])


def test_given_weights_are_loaded_once_and_nothing_says_from_scratch(untrained_weights, toy_dataset, tmp_path):
    config = "protoseg_r18-d8_fcn_toy.yaml"
    argv = demo_argv(config, "--input", first_val_image(toy_dataset), "--output", str(tmp_path / "pic.png"),
                     opts=["MODEL.WEIGHTS", str(untrained_weights[config])])
    with Records("fvcore") as records:
        demo.main(argv)
    assert not records.matching("from scratch") and not records.matching("No checkpoint found")
    assert len(records.matching("Loading from")) == 1
    assert (tmp_path / "pic.png").exists()


def test_demo_without_weights_is_refused_before_the_model_is_built(no_model, toy_dataset, tmp_path):
    argv = demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--input", first_val_image(toy_dataset), "--output", str(tmp_path))
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS is empty.*--allow-random-weights"):
        demo.main(argv)
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS .*nowhere.pth: no such file"):
        demo.main(argv + ["MODEL.WEIGHTS", str(tmp_path / "nowhere.pth")])


def test_demo_draws_a_random_model_when_asked(toy_dataset, tmp_path):
    argv = demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--allow-random-weights", "--input", first_val_image(toy_dataset),
                     "--output", str(tmp_path / "random.png"))
    with Records("protoseg") as records:
        demo.main(argv)
    assert records.matching("--allow-random-weights") and (tmp_path / "random.png").exists()


def test_inputs_are_checked_before_the_model_is_built(no_model, untrained_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/elsewhere")
    weights = ["MODEL.WEIGHTS", str(untrained_weights["protoseg_r18-d8_fcn_toy.yaml"])]
    pattern = "datasets/toy_scenes/images/validation/*.jpg"
    argv = demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--input", pattern, "--output", "vis", opts=weights)
    with pytest.raises(FileNotFoundError) as error:
        demo.main(argv)
    message = str(error.value)
    assert repr(pattern) in message and "DETECTRON2_DATASETS is '/data/elsewhere'" in message
    assert "${DETECTRON2_DATASETS:-datasets}/..." in message
    with pytest.raises(FileNotFoundError, match=r"--input '.*other\*.jpg' matches no readable image file$"):
        demo.main(demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--input", str(tmp_path / "other*.jpg"), opts=weights))
    with pytest.raises(FileNotFoundError, match="--video-input clip.mp4: no such file"):
        demo.main(demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--video-input", "clip.mp4", "--output", "v.mp4", opts=weights))


def test_demo_refuses_a_checkpoint_of_another_class_count(untrained_weights, toy_dataset, tmp_path):
    """The parametric baseline has no prototype buffer: DetectionCheckpointer would skip its
    classifier with a warning and draw the predictions of a random classifier."""
    config = "parametric_r18-d8_fcn_toy.yaml"
    argv = demo_argv(config, "--input", first_val_image(toy_dataset), "--output", str(tmp_path / "pic.png"),
                     opts=["MODEL.WEIGHTS", str(untrained_weights[config]), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"])
    with pytest.raises(ValueError, match=r"sem_seg_head.classifier.weight \(8, 64, 1, 1\) in the checkpoint vs "
                                         r"\(5, 64, 1, 1\) in the model"):
        demo.main(argv)
    assert not (tmp_path / "pic.png").exists()


# ---- every input is decoded before the model is built; images read as training reads them -------
def input_folder(toy_dataset, tmp_path):
    """in/: two toy images (JPEG, PNG), a text file, a file that is no image, a truncated JPEG."""
    folder = tmp_path / "in"
    folder.mkdir()
    jpeg = sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[0]
    (folder / "a.jpg").write_bytes(jpeg.read_bytes())
    Image.open(jpeg).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("what these pictures are")
    (folder / "trunc.jpg").write_bytes(jpeg.read_bytes()[:600])
    return folder


def test_glob_members_that_are_not_images_are_skipped_and_the_rest_drawn(untrained_weights, toy_dataset, tmp_path):
    folder = input_folder(toy_dataset, tmp_path)
    argv = demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--input", str(folder / "*"), "--output", str(tmp_path / "out"),
                     opts=["MODEL.WEIGHTS", str(untrained_weights["protoseg_r18-d8_fcn_toy.yaml"])])
    with Records("protoseg") as records:
        demo.main(argv)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    skipped = records.matching("skipping")
    assert len(skipped) == 1 and skipped[0].startswith("skipping 3 input file(s) that are not readable images: ")
    for name in ("broken.jpg", "notes.txt"):
        assert f"{folder / name} (not an image: no format Pillow can decode)" in skipped[0]
    assert f"{folder / 'trunc.jpg'} (cannot be decoded: OSError: " in skipped[0]


def test_broken_inputs_are_found_before_the_model_is_built(no_model, untrained_weights, toy_dataset, tmp_path):
    folder = input_folder(toy_dataset, tmp_path)
    weights = ["MODEL.WEIGHTS", str(untrained_weights["protoseg_r18-d8_fcn_toy.yaml"])]
    config = "protoseg_r18-d8_fcn_toy.yaml"
    with pytest.raises(ImageReadError, match=r"--input .*trunc\.jpg is not a readable image: cannot be decoded"):
        demo.main(demo_argv(config, "--input", str(folder / "a.jpg"), str(folder / "trunc.jpg"), opts=weights))
    with pytest.raises(FileNotFoundError, match=r"--input '.*\*\.txt' matches no readable image file: .*notes\.txt"):
        demo.main(demo_argv(config, "--input", str(folder / "*.txt"), opts=weights))
    with Records("protoseg") as records, pytest.raises(AssertionError, match="the model was built"):
        demo.main(demo_argv(config, "--input", str(folder / "b*"), "--output", str(tmp_path / "out"), opts=weights))
    assert records.matching(f"skipping 1 input file(s) that are not readable images: {folder / 'broken.jpg'}")


def test_16bit_image_reaches_the_model_scaled_not_clipped(untrained_weights, tmp_path, monkeypatch):
    gray = (np.arange(32)[None] * 2000 + np.arange(24)[:, None] * 40).astype(np.uint16)  # up to 62920
    Image.fromarray(gray).save(tmp_path / "deep.png")
    seen = []

    class Recorder:
        metadata = SimpleNamespace(stuff_classes=[f"toy{i:02d}" for i in range(8)])

        def __init__(self, cfg, **kwargs):
            pass

        def run_on_image(self, image):
            seen.append(image)
            return np.zeros(image.shape[:2], np.int64), np.zeros_like(image)

    monkeypatch.setattr(demo, "SemSegDemo", Recorder)
    demo.main(demo_argv("protoseg_r18-d8_fcn_toy.yaml", "--input", str(tmp_path / "deep.png"),
                        "--output", str(tmp_path / "pic.png"),
                        opts=["MODEL.WEIGHTS", str(untrained_weights["protoseg_r18-d8_fcn_toy.yaml"])]))
    assert len(seen) == 1 and seen[0].shape == (24, 32, 3) and seen[0].dtype == np.uint8
    for channel in seen[0].transpose(2, 0, 1):  # BGR, grey
        np.testing.assert_array_equal(channel, (gray >> 8).astype(np.uint8))
