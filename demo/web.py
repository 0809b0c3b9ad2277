#!/usr/bin/env python
"""A web page to look at a model: upload or pick an image, see the prediction drawn with the class
names (the drawing of demo/demo.py), and, for a ProtoSeg model, which of a class's K prototypes each
of its pixels is closest to, the similarity map of one prototype (the pictures of
tools/visualize_prototypes.py), and every pixel's unknown score: its distance to the nearest
prototype of any class (``TEST.UNKNOWN_SCORE nearest_prototype``, docs/OPEN_WORLD.md). Runs on the CPU; needs the [web] extra (pip install -e '.[web]').

    python demo/web.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \\
        --opts MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth
    # then open http://127.0.0.1:7860

Without MODEL.WEIGHTS the page refuses to start unless --allow-random-weights is given. The first
--num-examples validation images of the config's DATASETS.TEST[0] are offered as examples when the
dataset is on disk. The page listens on --host (default 127.0.0.1: this machine only).

Memory: an upload of more than --max-pixels pixels is analysed downscaled to that many (the page
says so); a session keeps only the image and its small analysis (pixel embeddings at the decoder's
stride, the label map as 8/16-bit), for --state-minutes after its last upload; the memory a
request used is handed back to the system after it (glibc's malloc_trim).
"""
import argparse
import ctypes
import ctypes.util
import functools
import gc
import logging
import math
import os

import cv2
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.utils.logger import setup_logger

from demo import setup_cfg  # (the demo's config and MODEL.WEIGHTS checks)
from predictor import SemSegDemo

from protoseg.data.image_io import read_image  # (the reader of training and the demo)
from protoseg.visualization.explorer import PrototypeExplorer

logger = logging.getLogger("protoseg")
WEB_INSTALL_HINT = "pip install -e '.[web]'   (or: pip install gradio)"
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # local fonts: the page loads nothing from elsewhere
DEFAULT_MAX_PIXELS = 4_000_000  # larger uploads are downscaled (a 2048x1024 Cityscapes image is not)
DEFAULT_STATE_MINUTES = 15.0  # a visitor's analysis is dropped this long after their last upload


def get_parser():
    parser = argparse.ArgumentParser(description="ProtoSeg web page: predictions and prototypes of a model")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--num-examples", type=int, default=8,
                        help="validation images of DATASETS.TEST[0] offered as examples (default 8)")
    parser.add_argument("--alpha", type=float, default=0.6, help="opacity of the class colours (default 0.6)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="start even without MODEL.WEIGHTS (a randomly initialised model)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"uploads with more pixels are analysed downscaled to this many "
                             f"(default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--state-minutes", type=float, default=DEFAULT_STATE_MINUTES,
                        help="a visitor's analysis (for the class and prototype choices) is dropped this "
                             f"long after its upload (default {DEFAULT_STATE_MINUTES:g})")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def example_images(cfg, count: int):
    """File names of the first ``count`` images of DATASETS.TEST[0]; [] when it is not on disk."""
    name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
    if not name or count <= 0:
        return []
    try:
        return [d["file_name"] for d in DatasetCatalog.get(name)[:count]]
    except Exception as e:  # not registered or not on disk
        logger.info("no example images: dataset %r is not available (%s)", name, e)
        return []


def fitted_size(height: int, width: int, max_pixels: int):
    """(height, width) scaled, aspect kept, to at most ``max_pixels`` pixels; unchanged if it fits."""
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def fit_to_pixels(image, max_pixels: int):
    """(H, W, 3) uint8 image -> itself, or downscaled (area averaging) to :func:`fitted_size`."""
    height, width = fitted_size(*image.shape[:2], max_pixels)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def upload_note(path: str, max_pixels: int) -> str:
    """The page's note on an uploaded file: "" when it is analysed at its size, else its size, the
    limit and the size analysed. ValueError when it is not an image (only its header is read)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"not an image this page can read (JPEG, PNG, BMP, TIFF, WebP, ...): {e}") from e
    fitted = fitted_size(height, width, max_pixels)
    if fitted == (height, width):
        return ""
    return (f"Note: the upload is {width}x{height} ({width * height / 1e6:.1f} MP), more than this page's "
            f"limit of {max_pixels / 1e6:.1f} MP (--max-pixels): it is analysed downscaled to "
            f"{fitted[1]}x{fitted[0]}.")


def release_memory() -> None:
    """Hand the memory freed by a request back to the system: glibc keeps freed blocks in its
    per-thread arenas (gradio runs each request on a worker thread), where a few hundred MB of
    one request's temporaries would stay counted in the process; no-op without glibc."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


class Session:
    """The model, the demo's drawing and the prototype pictures; what the page's callbacks call."""

    def __init__(self, cfg, alpha: float, max_pixels: int = DEFAULT_MAX_PIXELS,
                 state_seconds: float = 60 * DEFAULT_STATE_MINUTES):
        self.cfg = cfg
        self.max_pixels, self.state_seconds = max_pixels, state_seconds
        self.demo = SemSegDemo(cfg, alpha=alpha)
        try:
            self.explorer = PrototypeExplorer(self.demo.predictor.model, cfg, self.demo.metadata.stuff_classes,
                                              min_size=SemSegDemo.min_drawn_size)
        except ValueError as e:  # a parametric model: prediction only
            logger.info("no prototype pictures: %s", e)
            self.explorer = None

    def analyse(self, path: str):
        """Image file -> (overlay RGB uint8, state for the prototype pictures or None, class choices).
        The state is (RGB image, EmbeddingOutput with an 8/16-bit prediction): no (C, H, W) scores,
        embeddings at the decoder's stride. An image of more than ``max_pixels`` is downscaled."""
        image_bgr = read_image(path, format="BGR")  # as demo/demo.py reads it
        image_bgr = fit_to_pixels(image_bgr, self.max_pixels)
        label_map, overlay = self.demo.run_on_image(image_bgr)
        if self.explorer is None:
            return overlay, None, []
        image = convert_image_to_rgb(image_bgr, "BGR")
        output = self.explorer.embed(image if self.cfg.INPUT.FORMAT == "RGB" else image_bgr)
        return overlay, (image, output), self.explorer.class_choices(output.prediction)

    def unknown_view(self, state):
        """(picture, caption) of the image's unknown score (ProtoSeg models; (None, "") without an image)."""
        if state is None or self.explorer is None:
            return None, ""
        return self.explorer.unknown_image(state[1])

    def prototype_views(self, state, class_id, prototype=None):
        if state is None or self.explorer is None or class_id is None:
            return None
        return self.explorer.views(state[0], state[1], int(class_id), None if prototype is None else int(prototype))


def prototype_panel(gr, num_prototypes: int):
    """The class list, the prototype slider, a caption and the three prototype pictures.
    Returns (class list, [assignment, similarity, heat maps, caption, slider]: what a views update sets)."""
    with gr.Row():
        class_box = gr.Dropdown(choices=[], label="class", interactive=True, elem_id="class")
        slider = gr.Slider(0, num_prototypes - 1, step=1, value=0, label="prototype", interactive=True,
                           elem_id="prototype")
    caption = gr.Markdown(elem_id="caption")
    with gr.Row():
        assignment = gr.Image(format="png", label="closest prototype of each pixel of the class",
                              interactive=False, elem_id="assignment")
        similarity = gr.Image(format="png", label="similarity to the chosen prototype", interactive=False,
                              elem_id="similarity")
    with gr.Accordion("similarity to each of the K prototypes", open=False):
        heatmaps = gr.Image(format="png", show_label=False, interactive=False, elem_id="heatmaps")
    return class_box, [assignment, similarity, heatmaps, caption, slider]


def shown_errors(gr, fn):
    """``fn`` whose ValueError / OSError (e.g. a prototype out of range) the page shows (gr.Error),
    and which hands back the memory it used (:func:`release_memory`)."""
    @functools.wraps(fn)
    def wrapped(*args):
        try:
            return fn(*args)
        except (ValueError, OSError) as e:
            raise gr.Error(str(e)) from e
        finally:
            release_memory()

    return wrapped


def analyse_upload(gr, session: Session, payload):
    """The image component's payload (None, or a dict with the uploaded file's "path" and
    "orig_name") -> (overlay, state, class choices, note on the upload's size); gr.Error naming
    an upload that is not an image."""
    if not payload:
        return None, None, [], ""
    path = payload["path"]
    name = payload.get("orig_name") or os.path.basename(path)
    try:
        note = upload_note(path, session.max_pixels)
        return (*session.analyse(path), note)
    except (ValueError, OSError) as e:
        raise gr.Error(f"{name}: {e}") from e
    finally:
        release_memory()


def views_update(gr, views_and_k):
    """(PrototypeViews, prototype shown) or None -> the values of prototype_panel's pictures."""
    if views_and_k is None:
        return [None, None, None, "", gr.update()]
    views, k = views_and_k
    return [views.assignment, views.similarity, views.heatmaps, views.caption, gr.update(value=k)]


def build_app(session: Session, examples):
    """The gradio Blocks of the page: image and prediction, examples, and for a ProtoSeg model the
    prototype panel (the class list and slider redraw the pictures from the image's embeddings)."""
    import gradio as gr

    explorer = session.explorer
    with gr.Blocks(title="ProtoSeg", analytics_enabled=False) as app:
        gr.Markdown(f"## ProtoSeg: {os.path.basename(session.cfg.MODEL.WEIGHTS) or 'random weights'} "
                    f"({session.cfg.MODEL.SEM_SEG_HEAD.NAME}, {len(session.demo.metadata.stuff_classes)} classes)")
        with gr.Row():
            image = gr.Image(type="filepath", image_mode=None, label="image (upload, or pick an example below)",
                             sources=["upload", "clipboard"], elem_id="input-image")
            overlay = gr.Image(format="png", label="prediction", interactive=False, elem_id="prediction")
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label="validation images")
        note = gr.Markdown(elem_id="note")
        # per visitor: (RGB image, EmbeddingOutput), dropped state_seconds after it was set
        state = gr.State(None, time_to_live=session.state_seconds)
        # preprocess=False: the handler gets the upload's payload and checks it (gradio's own
        # decoding would answer a non-image with a bare "Error")
        if explorer is None:
            def on_image(payload):
                overlay_rgb, new_state, _, note_text = analyse_upload(gr, session, payload)
                return [overlay_rgb, new_state, note_text]

            image.change(on_image, inputs=[image], outputs=[overlay, state, note], preprocess=False)
            return app
        with gr.Row():
            unknown = gr.Image(format="png", label="unknown score", interactive=False, elem_id="unknown")
            unknown_caption = gr.Markdown(elem_id="unknown-caption")
        class_box, pictures = prototype_panel(gr, explorer.num_prototypes)

        def on_image(payload):
            overlay_rgb, new_state, choices, note_text = analyse_upload(gr, session, payload)
            first = choices[0][1] if choices else None
            unknown_rgb, unknown_text = shown_errors(gr, session.unknown_view)(new_state)
            return [overlay_rgb, new_state, note_text, unknown_rgb, unknown_text,
                    gr.update(choices=choices, value=first)] + views_update(
                gr, shown_errors(gr, session.prototype_views)(new_state, first))

        image.change(on_image, inputs=[image], outputs=[overlay, state, note, unknown, unknown_caption, class_box]
                     + pictures, preprocess=False)

        def on_choice(s, c, k=None):
            if s is None and c is not None:
                raise gr.Error(f"the analysis of this image was dropped after {session.state_seconds / 60:g} "
                               f"minutes: upload it again")
            return views_update(gr, shown_errors(gr, session.prototype_views)(s, c, k))

        class_box.input(on_choice, inputs=[state, class_box], outputs=pictures)
        pictures[-1].input(on_choice, inputs=[state, class_box, pictures[-1]], outputs=pictures)
    return app


def main(argv=None, block: bool = True):
    """Start the page; with ``block`` False, return the running gradio app (``app.close()`` stops it)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="protoseg")
    try:
        import gradio as gr
    except ModuleNotFoundError as e:
        raise SystemExit(f"{e.name} is not installed: the web page needs the [web] extra, {WEB_INSTALL_HINT}")
    cfg = setup_cfg(args)  # SystemExit without MODEL.WEIGHTS unless --allow-random-weights
    examples = example_images(cfg, args.num_examples)
    if args.max_pixels < 1 or args.state_minutes <= 0:
        raise SystemExit(f"--max-pixels ({args.max_pixels}) and --state-minutes ({args.state_minutes}) "
                         f"must be positive")
    app = build_app(Session(cfg, args.alpha, args.max_pixels, 60 * args.state_minutes), examples)
    theme = gr.themes.Default(font=FONTS, font_mono=["ui-monospace", "monospace"])
    app.launch(server_name=args.host, server_port=args.port, ssr_mode=False, share=False, theme=theme,
               allowed_paths=sorted({os.path.dirname(os.path.abspath(p)) for p in examples}),
               prevent_thread_lock=not block)
    return app


if __name__ == "__main__":
    main()
