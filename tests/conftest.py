import pytest
import torch


@pytest.fixture
def gen():
    """A fresh, seeded generator for each test."""
    g = torch.Generator()
    g.manual_seed(1234)
    return g
