"""Data sets: the catalogue of published files (``catalogue``), their resumable, verified
download and safe extraction into the layouts training and evaluation read (``fetch``), and
the MATLAB-exact LR maker for folders of HR images (``downscale``)."""

from edsr.datasets.catalogue import CATALOGUE, DATASETS, Archive, DataSetEntry
from edsr.datasets.downscale import downscale_folder
from edsr.datasets.fetch import data_root, download_dataset, find_data, get_dataset, status

__all__ = [
    "CATALOGUE",
    "DATASETS",
    "Archive",
    "DataSetEntry",
    "data_root",
    "download_dataset",
    "downscale_folder",
    "find_data",
    "get_dataset",
    "status",
]
