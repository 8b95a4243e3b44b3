"""Shared test set-up: the `backend` fixture (every API-level test runs on each available backend), a
`single_thread` fixture for tests made of tiny ops, `with_threads` for tests that compare thread counts, and the
hypothesis profile (reproducible in CI, no deadline on a shared, noisy machine)."""
import hypothesis
import pytest
import torch

import manual_conv

hypothesis.settings.register_profile(
    "manual_conv",
    deadline=None,
    max_examples=30,
    derandomize=True,  # the same examples on every run, so a CI failure reproduces locally
    # The backend fixture only selects a backend, which holds for every example of a test.
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("manual_conv")


@pytest.fixture(params=["python", "cpp"])
def backend(request):
    """Run the test on the Python reference kernels, then on the compiled ones (skipped when not built)."""
    if request.param == "cpp" and not manual_conv.extension_available():
        pytest.skip("the compiled extension manual_conv._C is not built")
    with manual_conv.use_backend(request.param):
        yield request.param


@pytest.fixture
def single_thread():
    """One intra-op thread: tests run thousands of tiny ops, for which handing work to a second OpenMP thread
    costs more than the op (and, on a shared machine, stalls until that thread is scheduled)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def with_threads():
    """with_threads(count, compute): compute() run with `count` intra-op threads, the test's own count restored
    afterwards (for kernels whose results must not depend on how their work is shared among threads)."""
    threads = torch.get_num_threads()

    def run(count, compute):
        torch.set_num_threads(count)
        try:
            return compute()
        finally:
            torch.set_num_threads(threads)

    return run
