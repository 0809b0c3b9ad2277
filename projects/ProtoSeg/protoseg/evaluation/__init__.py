from .evaluator import REPORT_FILES, SemSegReportEvaluator
from .metrics import segmentation_metrics
from .report import (
    confused_pairs,
    format_confused_pairs_table,
    format_per_class_table,
    per_class_rows,
    plot_per_class_iou,
    save_confused_pairs_csv,
    save_per_class_csv,
)

__all__ = [
    "REPORT_FILES",
    "SemSegReportEvaluator",
    "confused_pairs",
    "format_confused_pairs_table",
    "format_per_class_table",
    "per_class_rows",
    "plot_per_class_iou",
    "save_confused_pairs_csv",
    "save_per_class_csv",
    "segmentation_metrics",
]
