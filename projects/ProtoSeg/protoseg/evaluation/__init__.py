from .report import format_per_class_table, per_class_rows, save_per_class_csv

__all__ = ["format_per_class_table", "per_class_rows", "save_per_class_csv"]
