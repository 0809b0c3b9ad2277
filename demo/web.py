#!/usr/bin/env python
"""A web page to look at a model: upload or pick an image, see the prediction drawn with the class
names (the drawing of demo/demo.py), and, for a ProtoSeg model, which of a class's K prototypes each
of its pixels is closest to and the similarity map of one prototype (the pictures of
tools/visualize_prototypes.py). Runs on the CPU; needs the [web] extra (pip install -e '.[web]').

    python demo/web.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \\
        --opts MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth
    # then open http://127.0.0.1:7860

Without MODEL.WEIGHTS the page refuses to start unless --allow-random-weights is given. The first
--num-examples validation images of the config's DATASETS.TEST[0] are offered as examples when the
dataset is on disk. The page listens on --host (default 127.0.0.1: this machine only).
"""
import argparse
import logging
import os
import sys

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import setup_cfg  # noqa: E402  (the demo's config and MODEL.WEIGHTS checks)
from predictor import SemSegDemo  # noqa: E402

from protoseg.data.image_io import read_image  # noqa: E402  (the reader of training and the demo)
from protoseg.visualization.explorer import PrototypeExplorer  # noqa: E402

logger = logging.getLogger("protoseg")
WEB_INSTALL_HINT = "pip install -e '.[web]'   (or: pip install gradio)"
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # local fonts: the page loads nothing from elsewhere


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


class Session:
    """The model, the demo's drawing and the prototype pictures; what the page's callbacks call."""

    def __init__(self, cfg, alpha: float):
        self.cfg = cfg
        self.demo = SemSegDemo(cfg, alpha=alpha)
        try:
            self.explorer = PrototypeExplorer(self.demo.predictor.model, cfg, self.demo.metadata.stuff_classes,
                                              min_size=SemSegDemo.min_drawn_size)
        except ValueError as e:  # a parametric model: prediction only
            logger.info("no prototype pictures: %s", e)
            self.explorer = None

    def analyse(self, path: str):
        """Image file -> (overlay RGB uint8, state for the prototype pictures or None, class choices)."""
        image_bgr = read_image(path, format="BGR")  # as demo/demo.py reads it
        label_map, overlay = self.demo.run_on_image(image_bgr)
        if self.explorer is None:
            return overlay, None, []
        image = convert_image_to_rgb(image_bgr, "BGR")
        output = self.explorer.embed(image if self.cfg.INPUT.FORMAT == "RGB" else image_bgr)
        return overlay, (image, output), self.explorer.class_choices(output.prediction)

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
        state = gr.State(None)  # (RGB image, EmbeddingOutput) of the image shown
        if explorer is None:
            image.change(lambda path: session.analyse(path)[:2] if path else [None, None], inputs=[image],
                         outputs=[overlay, state])
            return app
        class_box, pictures = prototype_panel(gr, explorer.num_prototypes)

        def on_image(path):
            overlay_rgb, new_state, choices = session.analyse(path) if path else (None, None, [])
            first = choices[0][1] if choices else None
            return [overlay_rgb, new_state, gr.update(choices=choices, value=first)] + views_update(
                gr, session.prototype_views(new_state, first))

        image.change(on_image, inputs=[image], outputs=[overlay, state, class_box] + pictures)
        class_box.input(lambda s, c: views_update(gr, session.prototype_views(s, c)), inputs=[state, class_box],
                        outputs=pictures)
        pictures[-1].input(lambda s, c, k: views_update(gr, session.prototype_views(s, c, k)),
                           inputs=[state, class_box, pictures[-1]], outputs=pictures)
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
    app = build_app(Session(cfg, args.alpha), examples)
    theme = gr.themes.Default(font=FONTS, font_mono=["ui-monospace", "monospace"])
    app.launch(server_name=args.host, server_port=args.port, ssr_mode=False, share=False, theme=theme,
               allowed_paths=sorted({os.path.dirname(os.path.abspath(p)) for p in examples}),
               prevent_thread_lock=not block)
    return app


if __name__ == "__main__":
    main()
