"""Prototype interpretability tools: what the prototypes of a trained ProtoSeg model respond to.

- :mod:`.inference`: load a model, pixel embeddings (D, h, w) + prediction (H, W) of an image;
- :mod:`.prototype_maps`: per-class closest-prototype assignment map and similarity heat maps
  (the paper's Fig. 3);
- :mod:`.embedding_view`: 2-D projection (t-SNE / PCA) of pixel embeddings and prototypes
  (the paper's Fig. 5);
- :mod:`.prototype_health`: within-class prototype diversity and usage of any checkpoint
  (collapse diagnostic, reference issues #9 / #15).

Command-line front ends: ``tools/visualize_prototypes.py`` and ``tools/inspect_prototypes.py``;
see docs/INTERPRETABILITY.md.
"""
from .inference import (
    EmbeddingOutput,
    InputInfo,
    build_cfg,
    embed_image,
    labelled_cell_embeddings,
    labels_to_grid,
    load_model,
    prototype_memory,
    read_dataset_sample,
    upsample_to_image,
)
from .prototype_maps import (
    ClassPrototypeMaps,
    assignment_image,
    class_index,
    class_similarity_maps,
    compute_class_maps,
    plot_assignment,
    plot_similarity_heatmaps,
    prototype_colors,
    save_figure,
)
from .embedding_view import (
    PROJECTIONS,
    PixelSample,
    collect_pixel_embeddings,
    embedding_view,
    plot_embedding,
    project_2d,
)
from .prototype_health import (
    HealthReport,
    health_report,
    load_prototypes,
    pairwise_cosine_per_class,
    prototype_usage,
)
