"""Readers for labelled MRI collections: CARE, nnU-Net raw, images + masks folders, flat pairs;
the CHAOS MR download converted into flat pairs (``chaos``)."""

from sslmedsam2.datasets.check import CollectionError, check_collection, require_clean
from sslmedsam2.datasets.collection import LAYOUTS, Collection, detect_layout, read_collection

__all__ = ["LAYOUTS", "Collection", "CollectionError", "check_collection", "detect_layout",
           "read_collection", "require_clean"]
