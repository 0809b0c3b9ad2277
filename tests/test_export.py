"""ONNX / TorchScript export (protoseg/export.py, tools/export_model.py): the exported toy models
give PyTorch's logits (>= 99.99 % same argmax, logits within 1e-3) at two image sizes with one file,
and the tool fails (non-zero exit) when its check fails. Needs the [export] extra."""

import json
import os

import numpy as np
import pytest
import torch

from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from conftest import REPO, TOY_CONFIGS, load_script, toy_cfg

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from protoseg.checkpoint import ProtoSegCheckpointer  # noqa: E402
from protoseg.export import (  # noqa: E402
    ExportableSegmentor,
    compare_logits,
    export_cfg,
    export_metadata,
    export_onnx,
    image_to_input,
    load_onnx_session,
    resize_for_test,
    resize_to,
    torch_logits,
)

MIN_AGREEMENT, ATOL = 0.9999, 1e-3


tool = load_script("export_model_tool", REPO / "tools" / "export_model.py")


def val_inputs(toy_dataset, cfg, count=3):
    """(1, 3, H, W) uint8 toy validation images as the graph takes them (128 x 128)."""
    paths = sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[:count]
    return [image_to_input(resize_for_test(read_image(str(p), format=cfg.INPUT.FORMAT), cfg)) for p in paths]


def assert_matches(model, session, inputs):
    for x in inputs:
        result = compare_logits(torch_logits(model, x), session.run(None, {"image": x})[0])
        assert result.argmax_agreement >= MIN_AGREEMENT and result.max_abs_diff <= ATOL, (x.shape, result)


@pytest.fixture(scope="module")
def protoseg_export(trained_toy_checkpoint, tmp_path_factory):
    """(model, onnx session, metadata, path) of the trained toy ProtoSeg model."""
    cfg, weights = trained_toy_checkpoint
    cfg, _ = export_cfg(cfg)
    model = build_model(cfg)
    ProtoSegCheckpointer(model).load(str(weights))
    path = str(tmp_path_factory.mktemp("export") / "protoseg.onnx")
    export_onnx(ExportableSegmentor(model), path, export_metadata(cfg))
    session, metadata = load_onnx_session(path)
    return model, session, metadata, path


def test_protoseg_onnx_matches_pytorch_on_toy_images(protoseg_export, toy_dataset, trained_toy_checkpoint):
    model, session, metadata, _ = protoseg_export
    assert not model.training  # the exporter restores the wrapper's mode: eval
    inputs = val_inputs(toy_dataset, trained_toy_checkpoint[0])
    assert_matches(model, session, inputs)
    assert metadata["INPUT.FORMAT"] == "RGB" and metadata["INPUT.MIN_SIZE_TEST"] == 128
    assert len(metadata["classes"]) == 8


def test_one_file_takes_two_image_sizes(protoseg_export, toy_dataset, trained_toy_checkpoint):
    model, session, _, _ = protoseg_export
    image = val_inputs(toy_dataset, trained_toy_checkpoint[0], count=1)[0]
    other = image_to_input(resize_to(image[0].transpose(1, 2, 0), (97, 139)))
    assert_matches(model, session, [image, other])
    assert session.run(None, {"image": other})[0].shape == (1, 8, 97, 139)


def test_prototypes_are_a_constant_of_the_graph(protoseg_export):
    model, _, _, path = protoseg_export
    prototypes = model.sem_seg_head.memory.prototypes  # (C, K, D), stored prototype-major (K*C, D)
    expected = prototypes.transpose(0, 1).reshape(-1, prototypes.shape[-1]).numpy()
    constants = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer]
    assert any(c.shape == expected.shape and np.array_equal(c, expected) for c in constants)


def test_padding_to_the_size_divisibility_is_in_the_graph(trained_toy_checkpoint, toy_dataset, tmp_path,
                                                          monkeypatch):
    """No backbone of the project pads (size divisibility 0); one that does gets the padding of
    ImageList.from_tensors in the graph, and the logits cropped back."""
    cfg, weights = trained_toy_checkpoint
    cfg, _ = export_cfg(cfg)
    model = build_model(cfg)
    ProtoSegCheckpointer(model).load(str(weights))
    monkeypatch.setattr(type(model.backbone), "size_divisibility", property(lambda self: 32))
    path = str(tmp_path / "padded.onnx")
    export_onnx(ExportableSegmentor(model), path, export_metadata(cfg))
    assert "Pad" in {node.op_type for node in onnx.load(path).graph.node}  # (none without the padding)
    session, _ = load_onnx_session(path)
    image = val_inputs(toy_dataset, cfg, count=1)[0]
    assert_matches(model, session, [image, image_to_input(resize_to(image[0].transpose(1, 2, 0), (97, 139)))])


def test_chunked_config_exports_unchunked(trained_toy_checkpoint):
    cfg, changes = export_cfg(toy_cfg(opts=["MODEL.PROTOSEG.CHUNK_SIZE", 1024, "TEST.SLIDING_WINDOW.ENABLED", True]))
    assert cfg.MODEL.PROTOSEG.CHUNK_SIZE == 0 and not cfg.TEST.SLIDING_WINDOW.ENABLED
    assert any(c.startswith("MODEL.PROTOSEG.CHUNK_SIZE: 1024 -> 0") for c in changes)
    with pytest.raises(ValueError, match="CHUNK_SIZE"):
        ExportableSegmentor(build_model(toy_cfg(opts=["MODEL.PROTOSEG.CHUNK_SIZE", 1024])))


def test_parametric_head_onnx_matches_pytorch(trained_toy_checkpoint, toy_dataset, tmp_path):
    """ParametricSegHead with K = 3 learned prototypes per class (the max over K is in the graph), on
    the trained backbone and decoder, its classifier drawn with spread-out logits (no near-ties)."""
    cfg, weights = trained_toy_checkpoint
    trained = build_model(cfg)
    ProtoSegCheckpointer(trained).load(str(weights))
    pcfg, _ = export_cfg(toy_cfg("parametric_r18-d8_fcn_toy.yaml", ["MODEL.PARAMETRIC.NUM_PROTOTYPES", 3]))
    model = build_model(pcfg).eval()
    model.backbone.load_state_dict(trained.backbone.state_dict())
    model.sem_seg_head.decoder.load_state_dict(trained.sem_seg_head.decoder.state_dict())
    torch.nn.init.normal_(model.sem_seg_head.classifier.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    path = str(tmp_path / "parametric.onnx")
    export_onnx(ExportableSegmentor(model), path, export_metadata(pcfg))
    session, metadata = load_onnx_session(path)
    assert metadata["MODEL.SEM_SEG_HEAD.NAME"] == "ParametricSegHead"
    inputs = val_inputs(toy_dataset, pcfg, count=2)
    inputs.append(image_to_input(resize_to(inputs[0][0].transpose(1, 2, 0), (120, 96))))
    assert_matches(model, session, inputs)


@pytest.fixture(scope="module")
def tool_export(trained_toy_checkpoint, toy_dataset, tmp_path_factory):
    """(argv of tools/export_model.py for the trained toy model, output folder, exit code, stdout)."""
    _, weights = trained_toy_checkpoint
    out = tmp_path_factory.mktemp("tool_export")
    images = str(toy_dataset / "images" / "validation" / "toy_val_0000[01].jpg")
    argv = ["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--output", str(out),
            "--check", images, "MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "('toy_test_val',)"]
    return argv, out


def test_tool_exports_checks_and_times(tool_export, capsys):
    argv, out = tool_export
    assert tool.main(argv[:-4] + ["--format", "onnx", "torchscript", "--runs", "2"] + argv[-4:]) == 0
    text = capsys.readouterr().out
    assert (out / "model.onnx").is_file() and (out / "model.ts").is_file()
    # 2 images + the first at another size, for each runtime; the verdicts and the latencies
    assert text.count("onnxruntime toy_val_0000") == 3 and text.count("TorchScript toy_val_0000") == 3
    assert "(another size: dynamic shapes) 97x139" in text
    assert "[check] onnxruntime" in text and "PASSED" in text and "FAILED" not in text
    assert "[latency] 128x128 input" in text and "onnxruntime" in text.split("[latency]")[1]


def test_tool_fails_on_a_tampered_threshold(tool_export, capsys):
    argv, _ = tool_export
    # onnxruntime's logits differ from PyTorch's by ~1e-5 (other conv kernels): never within 1e-9
    assert tool.main(["--check-only", "--runs", "0", "--atol", "1e-9"] + argv) == 1
    assert "FAILED" in capsys.readouterr().out


def test_tool_fails_on_tampered_prototypes(tool_export, tmp_path, capsys):
    argv, out = tool_export
    proto = onnx.load(str(out / "model.onnx"))
    tampered = 0
    for tensor in proto.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        if array.shape == (80, 64):  # the prototypes, (K*C, D) = (10*8, 64)
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.roll(array, 1, axis=0), tensor.name))
            tampered += 1
    assert tampered == 1
    onnx.save(proto, str(tmp_path / "model.onnx"))
    i = argv.index("--output") + 1
    assert tool.main(["--check-only", "--runs", "0"] + argv[:i] + [str(tmp_path)] + argv[i + 1:]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_tool_fails_on_a_truncated_file(tool_export, tmp_path, capsys):
    argv, out = tool_export
    (tmp_path / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:100000])
    i = argv.index("--output") + 1
    assert tool.main(["--check-only"] + argv[:i] + [str(tmp_path)] + argv[i + 1:]) == 1
    assert "cannot load the ONNX file" in capsys.readouterr().out


def test_tool_names_the_missing_extra(tool_export, monkeypatch):
    argv, _ = tool_export
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match=r"onnxruntime is not installed.*pip install -e '\.\[export\]'"):
        tool.main(["--check-only"] + argv)


def test_tool_refuses_random_weights_and_splits_overrides(tmp_path):
    config = str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml")
    with pytest.raises(SystemExit, match="--allow-random-weights"):
        tool.main(["--config-file", config, "--output", str(tmp_path)])
    args = tool.parse_args(["--config-file", config, "--check", "a.jpg", "b.jpg", "MODEL.WEIGHTS", "w.pth"])
    assert args.check == ["a.jpg", "b.jpg"] and args.opts == ["MODEL.WEIGHTS", "w.pth"]


def test_exported_metadata_holds_no_absolute_path(tmp_path, monkeypatch):
    """The weights under the working directory: relative to the export folder; the config file
    outside it: its name only."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": build_model(toy_cfg()).state_dict()}, run / "model.pth")
    config = TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"
    monkeypatch.chdir(tmp_path)
    assert tool.main(["--config-file", str(config), "--output", str(run / "export"), "--format", "onnx",
                      "--no-check", "MODEL.WEIGHTS", str(run / "model.pth")]) == 0
    _, metadata = load_onnx_session(str(run / "export" / "model.onnx"))
    assert metadata["MODEL.WEIGHTS"] == os.path.join("..", "model.pth")
    assert metadata["config_file"] == "protoseg_r18-d8_fcn_toy.yaml"
    text = json.dumps(metadata)
    assert str(tmp_path) not in text and str(REPO) not in text
