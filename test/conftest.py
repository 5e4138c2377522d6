import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # tests never reach other hosts
import dff_ros  # noqa: F401,E402  (before torch: its numeric settings, dff_ros/numerics.py)
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Tests and benchmarks read the shared copy of MNIST beside the checkout (or $DFF_DATA_ROOT).
DATA_ROOT = Path(os.environ.get("DFF_DATA_ROOT") or REPO.parent / "shared" / "data")
os.environ["DFF_DATA_ROOT"] = str(DATA_ROOT)   # model configs read their data's shape from here
# decoded image folders are cached per test session (removed at its end), not in the user's ~/.cache
if not os.environ.get("DFF_CACHE_DIR"):
    os.environ["DFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="dff-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DFF_CACHE_DIR"], True)


def pytest_collection_modifyitems(items):
    """The DDS tests carry the ``ros`` marker (setup.cfg), so `-m "not ros"` leaves them out."""
    for item in items:
        name = item.path.name
        if name.startswith("test_ros_") or name == "test_multihost.py":
            item.add_marker(pytest.mark.ros)


@pytest.fixture(scope="session")
def data_root():
    return DATA_ROOT


@pytest.fixture(scope="session")
def mnist():
    from dff_ros.data import load_dataset

    if not (DATA_ROOT / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {DATA_ROOT}: put the shared data beside the checkout "
                    f"or set DFF_DATA_ROOT")
    return load_dataset("MNIST", DATA_ROOT, allow_download=False)


# DFF_TEST_THREADS=1 runs the suite with 1 torch thread (the default is 2, this machine's cores);
# results must not depend on it (dff_ros/numerics.py).
TEST_THREADS = int(os.environ.get("DFF_TEST_THREADS") or 2)


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(TEST_THREADS)
