"""A real qcluster and the gateway simulator process; the API runs in the test process."""

from tests.chaos.conftest import gateway, qcluster, qcluster_with_gateway  # noqa: F401
