"""One suite for both machines: kernels run on CUDA when there is a GPU, otherwise on CPU
tensors through Triton's interpreter, which must be switched on before the kernels are
defined, hence here, before anything imports wavkan."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# What wavkan caches (the decoded MNIST) goes to a folder of this session, never the user's.
_CACHE = tempfile.mkdtemp(prefix="wavkan-test-cache-")
os.environ["WAVKAN_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def kernel_device() -> torch.device:
    """Where the Triton kernels run in this session: the GPU, or the CPU under the interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
