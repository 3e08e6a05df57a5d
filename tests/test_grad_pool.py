"""The gradient pool behind CPU trajectory-length gradients from 1 MiB up (fastexpr.autograd)."""
from __future__ import annotations

import io
import os
import threading
import traceback

import numpy as np
import pytest
import torch

from fastexpr import autograd
from fastexpr.autograd import trajectory_length

pytestmark = pytest.mark.skipif(autograd.unavailable_reason("cpu", "cpu") is not None,
                                reason="the gradient pool lives in the C++ extension")
SHAPE = (512, 1024)  # 2 MiB of float32: one pool block


@pytest.fixture(autouse=True)
def fresh_pool():
    """Every test starts with an empty pool at the default limit and leaves it so."""
    previous = autograd.set_gradient_pool_limit(1 << 30)
    autograd.clear_gradient_pool()
    yield
    autograd.set_gradient_pool_limit(previous)
    autograd.clear_gradient_pool()


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def gradient(h, impl="cpu", closed=False):
    h = h.detach().requires_grad_()
    (grad,) = torch.autograd.grad(trajectory_length(h, closed=closed, backend=impl), h)
    return grad


def reference(h, closed=False):
    """d(length)/dh in float64 from the plainly written expression."""
    x = h.detach().double().requires_grad_()
    value = (x[1:] - x[:-1]).norm(dim=1).sum() + ((x[0] - x[-1]).norm() if closed else 0.0)
    (grad,) = torch.autograd.grad(value, x)
    return grad


@pytest.mark.parametrize("impl", ["cpu", "numba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("closed", [False, True])
def test_pooled_gradients_match_a_float64_reference(impl, dtype, closed):
    if autograd.unavailable_reason(impl, "cpu") is not None:
        pytest.skip(autograd.unavailable_reason(impl, "cpu"))
    h = randn(*SHAPE, seed=1, dtype=dtype)
    before = autograd.gradient_pool_info()
    for _ in range(3):  # a fresh block, then reused ones
        grad = gradient(h, impl, closed)
        assert grad.dtype == dtype and grad.shape == h.shape and grad.is_contiguous()
        assert grad.data_ptr() % (1 << 21) == 0  # a pool block
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(grad.double(), reference(h, closed), rtol=tol, atol=tol)
        del grad
    after = autograd.gradient_pool_info()
    assert after["reused"] - before["reused"] == 2 and after["mapped"] - before["mapped"] == 1


def test_small_gradients_do_not_use_the_pool():
    before = autograd.gradient_pool_info()
    gradient(randn(16, 1024))  # 64 KiB
    assert autograd.gradient_pool_info()["mapped"] == before["mapped"]


def test_a_block_is_reused_after_its_tensor_dies():
    h = randn(*SHAPE)
    grad = gradient(h)
    address = grad.data_ptr()
    info = autograd.gradient_pool_info()
    assert info["free_blocks"] == 0
    del grad
    info = autograd.gradient_pool_info()
    assert info["free_blocks"] == 1 and info["free_bytes"] == 2 << 20
    again = gradient(h)
    assert again.data_ptr() == address
    after = autograd.gradient_pool_info()
    assert after["reused"] == info["reused"] + 1 and after["mapped"] == info["mapped"]


def test_live_gradients_and_their_views_are_never_handed_out_again():
    h = randn(*SHAPE)
    first = gradient(h)
    first.fill_(7.0)
    view = gradient(h)[3:5]  # the tensor dies, the view keeps its block
    view.fill_(-1.0)
    held = first.numpy()  # a numpy view keeps the block too
    del first
    others = [gradient(h) for _ in range(3)]
    assert len({g.data_ptr() for g in others}) == 3
    assert np.all(held == 7.0) and torch.all(view == -1.0)
    for grad in others:
        torch.testing.assert_close(grad.double(), reference(h), rtol=1e-5, atol=1e-5)


def test_the_pool_keeps_free_blocks_up_to_its_limit():
    h = randn(*SHAPE)
    autograd.set_gradient_pool_limit(5 << 20)  # two 2 MiB blocks
    grads = [gradient(h) for _ in range(4)]
    del grads
    info = autograd.gradient_pool_info()
    assert info["free_blocks"] == 2 and info["free_bytes"] == 4 << 20 and info["limit_bytes"] == 5 << 20
    assert autograd.set_gradient_pool_limit(0) == 5 << 20
    assert autograd.gradient_pool_info()["free_blocks"] == 0
    del h


def test_blocks_larger_than_the_limit_are_unmapped_when_their_tensor_dies():
    autograd.set_gradient_pool_limit(1 << 20)
    grad = gradient(randn(*SHAPE))
    del grad
    assert autograd.gradient_pool_info()["free_blocks"] == 0


def test_clear_unmaps_free_blocks_only():
    h = randn(*SHAPE)
    live, dead = gradient(h), gradient(h)
    live.fill_(3.0)
    del dead
    assert autograd.gradient_pool_info()["free_blocks"] == 1
    autograd.clear_gradient_pool()
    assert autograd.gradient_pool_info()["free_blocks"] == 0
    assert torch.all(live == 3.0)


def test_a_pooled_gradient_saves_only_its_own_bytes():
    """The block is rounded up to 2 MiB; the tensor's storage is not."""
    h = randn(3, 100_003)  # 1.14 MiB, a 2 MiB block
    grad = gradient(h)
    assert grad.untyped_storage().nbytes() == grad.nbytes == h.nbytes
    saved, plain = io.BytesIO(), io.BytesIO()
    torch.save(grad, saved)
    torch.save(grad.clone(), plain)
    assert len(saved.getvalue()) == len(plain.getvalue())
    saved.seek(0)
    torch.testing.assert_close(torch.load(saved), grad, rtol=0, atol=0)


def test_accumulated_gradients_stay_right():
    """autograd keeps the first pooled gradient as h.grad and adds later ones into it."""
    h = randn(*SHAPE, seed=3).requires_grad_()
    for _ in range(3):
        trajectory_length(h).backward()
    torch.testing.assert_close(h.grad.double(), 3 * reference(h), rtol=1e-5, atol=1e-5)


def test_threads_get_distinct_blocks_and_right_gradients():
    inputs = [randn(*SHAPE, seed=s) for s in range(4)]
    expected = [reference(h) for h in inputs]
    errors = []
    before = autograd.gradient_pool_info()
    barrier = threading.Barrier(len(inputs))

    def work(k):
        try:
            barrier.wait()
            for _ in range(20):
                grad = gradient(inputs[k])
                torch.testing.assert_close(grad.double(), expected[k], rtol=1e-5, atol=1e-5)
                del grad
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    mapped = autograd.gradient_pool_info()["mapped"] - before["mapped"]
    assert mapped <= len(inputs) and autograd.gradient_pool_info()["free_blocks"] == mapped


def engine_free_gradient(h):
    """The cpu implementation's gradient of the open length without torch's autograd engine, which a
    forked child of a process that ran a backward may not use (CUDA builds that see a GPU refuse)."""
    forward, backward = autograd._IMPLEMENTATIONS["cpu"]
    _, norms = forward(h, False)
    return backward(h, norms, torch.tensor(1.0, dtype=h.dtype), False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_an_empty_pool_and_uses_it():
    h = randn(*SHAPE, seed=4)
    expected = reference(h)
    parent_grad = gradient(h)
    parent_grad.fill_(5.0)
    gradient(h)  # dies at once: one free block in the parent
    assert autograd.gradient_pool_info()["free_blocks"] == 1
    pid = os.fork()
    if pid == 0:  # the child reports through its exit status
        status = 1
        try:
            torch.set_num_threads(1)  # GNU OpenMP's threads do not survive fork
            assert autograd.gradient_pool_info()["free_blocks"] == 0
            first = engine_free_gradient(h)
            torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-5)
            address = first.data_ptr()
            del first
            assert engine_free_gradient(h).data_ptr() == address  # and back again
            assert torch.all(parent_grad == 5.0)
            del parent_grad  # the parent's live block joins the child's pool
            assert autograd.gradient_pool_info()["free_blocks"] == 2
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert torch.all(parent_grad == 5.0)
    assert autograd.gradient_pool_info()["free_blocks"] == 1


def test_bad_limits_and_environment_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="non-negative"):
        autograd.set_gradient_pool_limit(-1)
    for bad in (1.5, "64", True, None):
        with pytest.raises(TypeError, match="non-negative integer"):
            autograd.set_gradient_pool_limit(bad)
    from fastexpr import _C

    with pytest.raises(ValueError, match="negative"):
        _C.pooled_empty([2, -1], np.dtype(np.float32))
    with pytest.raises(ValueError, match="at least one byte"):
        _C.pooled_empty([0, 4], np.dtype(np.float32))
    monkeypatch.setenv(autograd.ENV_POOL_MIB, "lots")
    autograd._pool.cache_clear()
    try:
        with pytest.raises(ValueError, match=autograd.ENV_POOL_MIB):
            autograd.gradient_pool_info()
        monkeypatch.setenv(autograd.ENV_POOL_MIB, "3")
        autograd._pool.cache_clear()
        assert autograd.gradient_pool_info()["limit_bytes"] == 3 << 20
    finally:
        autograd._pool.cache_clear()
