import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's torch work on one thread: tiny-model ops are far too small to gain from
    intra-op threads, and on a shared 2-core CI machine the thread hand-offs cost more than the math."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
