"""Comparisons of deploy graphs and engines with the PyTorch model they came from."""
