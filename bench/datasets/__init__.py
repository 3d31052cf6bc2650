"""Datasets: a YAML registry, source adapters (ELEVATER-CN folders, …) and lazy image loading."""

from bench.datasets.registry import DatasetSpec, get_dataset, list_datasets  # noqa: F401
