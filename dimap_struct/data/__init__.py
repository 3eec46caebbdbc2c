"""Datasets for evaluation, calibration and fine-tuning: MNIST (IDX files) or an ImageFolder."""
from .datasets import (DATA_ENV, IMAGE_SUFFIXES, MNIST_FILES, SPLITS, MNISTDataset, build_dataset, build_loader,
                       data_path, load_mnist, num_classes, read_idx, split_indices)

__all__ = ["DATA_ENV", "IMAGE_SUFFIXES", "MNIST_FILES", "SPLITS", "MNISTDataset", "build_dataset", "build_loader",
           "data_path", "load_mnist", "num_classes", "read_idx", "split_indices"]
