import pytest

from tests.harness import stop_all_started


@pytest.fixture(autouse=True)
def _no_orphan_processes():
    """A failing acceptance test must not leave a simulator or daemon running."""
    yield
    stop_all_started()
