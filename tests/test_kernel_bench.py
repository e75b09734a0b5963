"""The benchmark says when there is no GPU to measure on, and exits with 2."""

from __future__ import annotations

import pytest
import torch

from maskrt.plugins import kernel_bench


def test_bench_without_a_gpu_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert kernel_bench.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
