"""Datasets: image folders and COCO instances jsons, INT8 calibration sets and their cache, the synthetic shapes set.

No PyTorch: calibration feeds the same letterbox as the edge runtime.
"""
