import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One temporary Prefect server for the whole session (its first start migrates a DB)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
