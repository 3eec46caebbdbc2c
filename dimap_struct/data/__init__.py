"""Datasets for evaluation, calibration and fine-tuning: MNIST (IDX files) or an ImageFolder."""
from .datasets import (DATA_ENV, IMAGE_SUFFIXES, MNIST_FILES, SPLITS, UNLABELLED, MNISTDataset, UnlabelledFolder,
                       build_dataset, build_loader, check_links, default_data, is_labelled, load_mnist,
                       num_classes, read_idx, read_image, split_indices)
from .fingerprint import data_fingerprint

__all__ = ["DATA_ENV", "IMAGE_SUFFIXES", "MNIST_FILES", "SPLITS", "UNLABELLED", "MNISTDataset", "UnlabelledFolder",
           "build_dataset", "build_loader", "check_links", "data_fingerprint", "default_data",
           "is_labelled", "load_mnist", "num_classes", "read_idx", "read_image", "split_indices"]
