"""Installs the ``protoseg`` package (a Detectron2 project) from ``projects/ProtoSeg``.

Detectron2 itself is not a dependency listed here: its name is not on PyPI. ``tools/setup_env.sh``
installs it (or keeps the one the interpreter already has); see README.md.
"""
from setuptools import find_packages, setup

setup(
    name="protoseg-d2",
    version="0.1.0",
    description="ProtoSeg (Rethinking Semantic Segmentation: A Prototype View, CVPR 2022) for Detectron2",
    license="Apache-2.0",
    package_dir={"": "projects/ProtoSeg"},
    packages=find_packages("projects/ProtoSeg"),
    # ADE20K-Full's fixed 847-class table (MaskFormer's), read by protoseg/data/ade20k_full.py
    package_data={"protoseg.data": ["tables/*.tsv"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=1.10",
        "numpy>=1.24",  # the project code uses no alias removed in 1.24
        "Pillow>=10.3",  # below 10.3: CVE-2023-4863, CVE-2023-50447, CVE-2024-28219
        "opencv-python-headless",
        "fvcore",
        "matplotlib",
        "tabulate",
        "scikit-learn",  # t-SNE / PCA of pixel embeddings (visualisation tools)
        # Swin and HRNet backbones (features_only wrappers). >=1.0: the feature-extraction API
        # (features_only with output_fmt, feature_info) these wrappers rely on.
        "timm>=1.0,<2",
    ],
    extras_require={
        # datasets/prepare_*.py: COCO-Stuff-10k's .mat annotations (scipy.io.loadmat) and
        # Cityscapes' label definitions / trainId conversion (cityscapesScripts).
        "datasets": ["scipy", "cityscapesScripts"],
        # tools/export_model.py: write ONNX and check it in onnxruntime (onnxscript: its --dynamo exporter)
        "export": ["onnx", "onnxruntime", "onnxscript"],
        # demo/web.py, the web page
        "web": ["gradio>=6,<7"],
        # train_net.py --submit slurm|local: the run as a SLURM job (or a local one) through submitit
        "slurm": ["submitit"],
    },
)
