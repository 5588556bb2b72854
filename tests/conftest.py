"""Test set-up shared by every test module.

The CUDA backend is tested under Numba's CUDA simulator, which must be switched on before numba
is first imported; set CONVSCOPE_REAL_CUDA=1 to run the same tests on a real GPU instead.
"""

import os

if os.environ.get("CONVSCOPE_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vgg16_notop_file(tmp_path_factory):
    """A synthetic VGG16 conv-stack file in the official layout (seed 0)."""
    from tests.synthetic import write_vgg16_official

    path = tmp_path_factory.mktemp("weights") / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_vgg16_official(path, include_top=False, seed=0)
    return path


@pytest.fixture(scope="session")
def vgg16_full_file(tmp_path_factory):
    """A synthetic VGG16 with classifier in the official layout (seed 0); 553 MB, written once."""
    from tests.synthetic import write_vgg16_official

    path = tmp_path_factory.mktemp("weights") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_vgg16_official(path, include_top=True, seed=0)
    return path
