"""fastexpr.trajectory_length: gradients, values and errors, for every implementation usable here."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastexpr import autograd
from fastexpr.autograd import trajectory_length
from fastexpr.backends import BackendUnavailable

CUDA = torch.cuda.is_available()
CASES = [("cpu", "cpu"), ("numba", "cpu"), ("torch", "cpu"), ("cuda", "cuda"), ("torch", "cuda")]


@pytest.fixture(params=CASES, ids=[f"{name}-{device}" for name, device in CASES])
def impl(request):
    """(implementation, device), skipped where it cannot run."""
    name, device = request.param
    if device == "cuda" and not CUDA:
        pytest.skip("no CUDA device")
    reason = autograd.unavailable_reason(name, device)
    if reason is not None:
        pytest.skip(reason)
    return name, device


def plain(h, closed=False):
    """The plain torch expression (differentiable through torch's own autograd)."""
    value = (h[1:] - h[:-1]).flatten(1).norm(dim=1).sum()
    if closed:
        value = value + (h[0] - h[-1]).norm()
    return value


def run(impl, h, closed=False):
    return trajectory_length(h, closed=closed, backend=impl[0])


def randn(*shape, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("shape", [(2, 3), (3, 1), (7, 5), (4, 2, 3)])
def test_gradcheck(impl, closed, shape):
    h = randn(*shape, device=impl[1]).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: run(impl, x, closed), (h,))


@pytest.mark.parametrize("closed", [False, True])
def test_gradcheck_repeated_rows(impl, closed):
    h = randn(6, 4, device=impl[1])
    h[2] = h[1]  # zero-length segment: the zero subgradient matches central differences
    h[5] = h[0]  # closing segment of zero length; also a repeat far apart
    assert torch.autograd.gradcheck(lambda x: run(impl, x, closed), (h.requires_grad_(),))


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_matches_plain_expression(impl, closed, dtype):
    h = randn(9, 2, 11, device=impl[1], seed=1).to(dtype).requires_grad_()
    value = run(impl, h, closed)
    (grad,) = torch.autograd.grad(value, h)
    reference = h.detach().double().requires_grad_()
    expected = plain(reference, closed)
    (expected_grad,) = torch.autograd.grad(expected, reference)
    assert value.dtype == dtype and value.device == h.device and value.shape == ()
    assert grad.dtype == dtype and grad.shape == h.shape
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(value.double(), expected, rtol=tol, atol=0)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 300_000), (300, 1000), (5, 70_000)])
def test_large_inputs_use_every_code_path(impl, shape):
    """Row-parallel, column-chunked and multi-block paths agree with the plain expression."""
    h = randn(*shape, device=impl[1], dtype=torch.float32, seed=2).requires_grad_()
    for closed in (False, True):
        value = run(impl, h, closed)
        (grad,) = torch.autograd.grad(value, h)
        reference = h.detach().double().requires_grad_()
        expected = plain(reference, closed)
        (expected_grad,) = torch.autograd.grad(expected, reference)
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_from_1_mib_up_are_plain_tensors_from_the_pool(impl, dtype):
    """The large-gradient allocation (a 2 MiB-aligned block of the gradient pool, in huge pages on
    Linux) gives the right gradient, with h's shape and strides, that autograd accumulates as usual.
    From 16 MiB up the cpu backward streams its stores; rows of odd length start unaligned."""
    if impl[0] not in ("cpu", "numba"):
        pytest.skip("only the cpu and numba backwards allocate this way")
    h = randn(4, 2_100_001, dtype=dtype, seed=10).requires_grad_()
    assert h.nbytes >= autograd._POOL_FROM
    run(impl, h, True).backward()
    grad = h.grad
    assert grad.shape == h.shape and grad.stride() == h.stride() and grad.dtype == h.dtype
    if autograd._pool() is not None:
        assert grad.data_ptr() % (1 << 21) == 0
    reference = h.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(plain(reference, True), reference)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-6)
    run(impl, h, True).backward()  # accumulates into the same gradient
    torch.testing.assert_close(h.grad.double(), 2 * expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("closed", [False, True])
def test_zero_length_segments_give_finite_zero_gradients(impl, closed):
    h = torch.ones(5, 3, dtype=torch.float64, device=impl[1], requires_grad=True)
    value = run(impl, h, closed)
    (grad,) = torch.autograd.grad(value, h)
    assert value.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    # One repeated row among distinct ones: the rows at the ends of the zero segment get
    # only the other segments' unit vectors.
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [3.0, 0.0]], dtype=torch.float64, device=impl[1],
                     requires_grad=True)
    (grad,) = torch.autograd.grad(run(impl, h, False), h)
    expected = torch.tensor([[-0.6, -0.8], [0.6, 0.8], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(grad.cpu(), expected)


def test_one_segment_closed_counts_twice(impl):
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64, device=impl[1], requires_grad=True)
    assert run(impl, h, False).item() == pytest.approx(5.0)
    value = run(impl, h, True)
    assert value.item() == pytest.approx(10.0)
    (grad,) = torch.autograd.grad(value, h)
    torch.testing.assert_close(grad.cpu(), torch.tensor([[-1.2, -1.6], [1.2, 1.6]], dtype=torch.float64))


def test_non_contiguous_input(impl):
    h = randn(6, 9, device=impl[1]).t()  # (9, 6) view
    torch.testing.assert_close(run(impl, h), plain(h))


def test_gradient_scales_with_upstream_gradient(impl):
    h = randn(5, 3, device=impl[1]).requires_grad_()
    (grad,) = torch.autograd.grad(3.5 * run(impl, h), h)
    (expected,) = torch.autograd.grad(3.5 * plain(h), h)
    torch.testing.assert_close(grad, expected)


def reference_hessian(h, closed):
    """The Hessian of the path length of the rows of ``h`` (B, D), written plainly in float64:
    segment a -> b with difference d != 0 adds P = (I - u u^T) / ||d||, u = d / ||d||, to the
    blocks (a, a) and (b, b) and subtracts it from (a, b) and (b, a); a zero-length segment adds
    nothing (fastexpr's convention)."""
    h = np.asarray(h, dtype=np.float64)
    b, d = h.shape
    hessian = np.zeros((b, d, b, d))
    for a in range(b if closed else b - 1):
        nxt = (a + 1) % b
        diff = h[nxt] - h[a]
        norm = np.sqrt(np.sum(diff * diff))
        if norm == 0.0:
            continue
        u = diff / norm
        p = (np.eye(d) - np.outer(u, u)) / norm
        for i, j, sign in ((a, a, 1), (nxt, nxt, 1), (a, nxt, -1), (nxt, a, -1)):
            hessian[i, :, j, :] += sign * p
    return hessian.reshape(b * d, b * d)


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("shape", [(2, 3), (3, 1), (7, 5)])
def test_gradgradcheck(impl, closed, shape):
    h = randn(*shape, device=impl[1], seed=4).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: run(impl, x, closed), (h,))


@pytest.mark.parametrize("closed", [False, True])
def test_gradgradcheck_through_zero_length_segments(impl, closed):
    """Rows that stay equal under every perturbation: a segment of length zero throughout, whose
    zero contribution to every derivative is then exact."""
    x = randn(5, 3, device=impl[1], seed=5).requires_grad_()

    def repeated(x):
        return run(impl, torch.cat([x[:2], x[1:2], x[2:], x[:1]]), closed)  # rows 1 = 2, 0 = last

    assert torch.autograd.gradgradcheck(repeated, (x,))


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("repeat", [False, True])
def test_hessian_matches_reference(impl, closed, repeat):
    h = randn(6, 4, device=impl[1], seed=6)
    if repeat:
        h[3] = h[2]  # an isolated zero-length segment
        h[5] = h[0]
    hessian = torch.autograd.functional.hessian(lambda x: run(impl, x, closed), h)
    expected = reference_hessian(h.cpu().numpy(), closed)
    np.testing.assert_allclose(hessian.cpu().reshape(24, 24).numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_double_backward_through_a_gradient_penalty(impl, dtype):
    """The issue's case: the gradient taken with create_graph=True, then backward through a
    penalty on it, gives the reference Hessian-vector product, not a silently dropped term."""
    h = randn(7, 3, device=impl[1], seed=7).to(dtype).requires_grad_()
    (grad,) = torch.autograd.grad(2.0 * run(impl, h, True), h, create_graph=True)
    assert grad.requires_grad
    (grad * grad).sum().backward()
    flat_grad = grad.detach().cpu().double().reshape(-1).numpy()
    expected = 2 * 2.0 * reference_hessian(h.detach().cpu().numpy(), True) @ flat_grad  # d/dh sum(grad^2)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(h.grad.cpu().double().reshape(-1).numpy(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["cpu", "numba", "torch"])
def test_compile_fullgraph_matches_eager(name):
    """torch.compile(fullgraph=True) sees the custom ops: same value and gradient as eager.
    (aot_eager keeps the test fast; it traces the same graph that inductor would compile.)"""
    reason = autograd.unavailable_reason(name, "cpu")
    if reason is not None:
        pytest.skip(reason)

    def both(h):
        return trajectory_length(h, backend=name) + 2.0 * trajectory_length(h, closed=True, backend=name)

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    for shape, dtype in (((7, 5), torch.float64), ((9, 2, 3), torch.float32)):
        h = randn(*shape, dtype=dtype, seed=8).requires_grad_()
        value = compiled(h)
        (grad,) = torch.autograd.grad(value, h)
        expected = both(h)
        (expected_grad,) = torch.autograd.grad(expected, h)
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cpu", "numba", "torch"])
def test_transforms_and_tracers_see_the_custom_ops(name):
    """make_fx goes through the custom ops (the eager Function, whose kernels read raw memory, would be
    baked into a traced graph as a constant); torch.func.vmap computes with plain torch operations."""
    reason = autograd.unavailable_reason(name, "cpu")
    if reason is not None:
        pytest.skip(reason)
    from torch.fx.experimental.proxy_tensor import make_fx

    def length(h):
        return trajectory_length(h, backend=name)

    batch = randn(3, 6, 4, seed=12)
    torch.testing.assert_close(torch.func.vmap(length)(batch), torch.stack([length(h) for h in batch]))
    graph = make_fx(length)(batch[0])
    torch.testing.assert_close(graph(batch[1]), length(batch[1]))
    torch.testing.assert_close(graph(torch.zeros(6, 4, dtype=batch.dtype)), torch.zeros((), dtype=batch.dtype))


def test_compile_fullgraph_in_a_fresh_process():
    """The first call of a process may be a compiled one: dynamo must not see a backend being
    loaded (it refuses importlib), for auto and for each named implementation in turn."""
    script = textwrap.dedent("""
        import torch
        from fastexpr.autograd import trajectory_length
        from fastexpr.backends import BackendUnavailable
        for name in ["auto", "cpu", "numba", "torch"]:  # none loaded before its compiled call
            f = torch.compile(lambda h: trajectory_length(h, backend=name), fullgraph=True, backend="aot_eager")
            h = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
            try:
                value = f(h)
            except BackendUnavailable:  # e.g. numba not installed
                continue
            value.backward()
            torch.testing.assert_close(value, trajectory_length(h.detach(), backend=name), rtol=0, atol=0)
            assert h.grad is not None and torch.isfinite(h.grad).all()
            torch._dynamo.reset()
        print("ok")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_custom_ops_pass_opcheck():
    """The registrations (schema, fake kernels, autograd) are consistent, per torch.library."""
    h = randn(6, 4, seed=9).requires_grad_()
    for name in autograd.available("cpu"):
        forward = torch.library.opcheck(autograd._forward_op, (h, True, name))
        assert all(v == "SUCCESS" for v in forward.values()), forward
        norms = autograd._forward_op(h.detach(), True, name)[1]
        backward = torch.library.opcheck(autograd._backward_op, (h.detach(), norms, torch.tensor(1.5), True, name),
                                         test_utils=("test_schema", "test_faketensor"))
        assert all(v == "SUCCESS" for v in backward.values()), backward


def test_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        trajectory_length(np.ones((3, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        trajectory_length(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point"):
        trajectory_length(torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least two samples"):
        trajectory_length(torch.ones(1, 5))
    with pytest.raises(ValueError, match="at least two samples"):
        trajectory_length(torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least one feature"):
        trajectory_length(torch.ones(4, 0))
    with pytest.raises(ValueError, match="unknown trajectory-length backend"):
        trajectory_length(torch.ones(3, 2), backend="fortran")
    with pytest.raises(BackendUnavailable, match="cuda tensors only"):
        trajectory_length(torch.ones(3, 2), backend="cuda")


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv(autograd.ENV_BACKEND, "torch")
    assert autograd.choose_backend("auto", "cpu") == "torch"
    assert autograd.choose_backend("torch", "cpu") == "torch"
    monkeypatch.delenv(autograd.ENV_BACKEND)
    assert autograd.choose_backend("auto", "cpu") == autograd.available("cpu")[0]


def test_one_dimensional_input_is_a_path_on_the_line():
    h = torch.tensor([0.0, 2.0, -1.0], requires_grad=True)
    value = trajectory_length(h)
    assert value.item() == pytest.approx(5.0)
    (grad,) = torch.autograd.grad(value, h)
    torch.testing.assert_close(grad, torch.tensor([-1.0, 2.0, -1.0]))


def test_extension_checks_its_arguments():
    reason = autograd.unavailable_reason("cpu", "cpu")
    if reason is not None:
        pytest.skip(reason)
    from fastexpr import _C

    h = np.ones((3, 4))
    total, norms = _C.traj_length_forward(h, False)
    out = np.empty_like(h)
    with pytest.raises(ValueError, match="2-D"):
        _C.traj_length_forward(np.ones(3), False)
    with pytest.raises(ValueError, match="float32 or float64"):
        _C.traj_length_forward(np.ones((3, 4), dtype=np.int32), False)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.traj_length_forward(np.ones((3, 8))[:, ::2], False)
    with pytest.raises(ValueError, match="at least two rows"):
        _C.traj_length_forward(np.ones((1, 4)), False)
    with pytest.raises(ValueError, match="segment lengths"):
        _C.traj_length_backward(h, norms, 1.0, True, out)  # closed needs 3 norms, got 2
    with pytest.raises(ValueError, match="shape and dtype"):
        _C.traj_length_backward(h, norms, 1.0, False, np.empty((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="overlap"):
        _C.traj_length_backward(h, norms, 1.0, False, h)


@pytest.mark.parametrize("scale, upstream", [(1e-30, 1.0), (1e30, 1.0), (1e30, 1e-20), (1e-30, 1e30)])
@pytest.mark.parametrize("shape", [(6, 300), (7, 20_000)])  # short rows; long rows (segments in pairs)
def test_float32_extremes_neither_overflow_nor_underflow(impl, scale, upstream, shape):
    """Tiny or huge activations, and upstream gradients whose ratio to the norms leaves float32."""
    h = (randn(*shape, device=impl[1], seed=3) * scale).float().requires_grad_()
    value = run(impl, h)
    (grad,) = torch.autograd.grad(value, h, torch.tensor(upstream, device=impl[1]))
    reference = h.detach().double().requires_grad_()
    expected = plain(reference)
    (expected_grad,) = torch.autograd.grad(expected, reference, torch.tensor(upstream, dtype=torch.float64))
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6 * upstream)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1e160, 1e300])
@pytest.mark.parametrize("closed", [False, True])
def test_float64_extremes_neither_overflow_nor_underflow(impl, scale, closed):
    """float64 rows whose differences square outside float64's range: the length scales with h and
    the gradient does not change (the plain sum of squares gave inf or 0, and a zero gradient)."""
    h = randn(6, 300, device=impl[1], seed=4)
    h[3] = h[2]  # one zero-length segment among them
    base = h.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(plain(base, closed), base)
    scaled = (h * scale).requires_grad_()
    value = run(impl, scaled, closed)
    (grad,) = torch.autograd.grad(value, scaled)
    torch.testing.assert_close(value / scale, plain(h, closed), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    # one huge segment beside ordinary ones
    mixed = h.clone()
    mixed[-1] = mixed[-2] + 1e200
    torch.testing.assert_close(run(impl, mixed, closed) / 1e200, torch.tensor(2 * np.sqrt(300.0), dtype=torch.float64)
                               if closed else torch.tensor(np.sqrt(300.0), dtype=torch.float64), rtol=1e-12, atol=0)


def test_subnormal_segments_have_unit_gradients(impl):
    """A segment of norm 3e-310: d(length)/dh is a unit vector, not g / norm = inf."""
    h = torch.tensor([[0.0], [3e-310], [1.0]], dtype=torch.float64, device=impl[1], requires_grad=True)
    (grad,) = torch.autograd.grad(run(impl, h), h)
    torch.testing.assert_close(grad.cpu(), torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(run(impl, h), h, create_graph=True)
    torch.testing.assert_close(grad.detach().cpu(), torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160, 1e200])
def test_double_backward_at_extreme_scales(impl, scale):
    """Hessian-vector products scale as 1/s: the double-backward path never squares a norm."""
    h = randn(5, 7, device=impl[1], seed=8)
    v = randn(5, 7, device=impl[1], seed=9)

    def hvp(x):
        x = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(run(impl, x), x, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), x)
        return hv

    torch.testing.assert_close(hvp(h * scale) * scale, hvp(h), rtol=1e-10, atol=1e-12)


def test_float32_tiny_differences_under_create_graph(impl):
    """The unit vectors are built in float64 and cast: 1 / norm of float32 differences of 1e-39 no longer
    overflows float32 (the create_graph gradient was [-inf, nan, inf])."""
    h = torch.tensor([[0.0], [1e-39], [2e-39]], dtype=torch.float32, device=impl[1], requires_grad=True)
    (grad,) = torch.autograd.grad(run(impl, h), h, create_graph=True)
    torch.testing.assert_close(grad.detach().cpu(), torch.tensor([[-1.0], [0.0], [1.0]]))


def test_float32_segments_beyond_float32_have_unit_gradients(impl):
    """A float32 segment whose norm overflows float32 (or is subnormal there): the gradient is still
    the unit vector (the torch backend cast the float64 norm to float32 before dividing)."""
    h = torch.tensor([[0.0] * 4, [3e38] * 4], dtype=torch.float32, device=impl[1], requires_grad=True)
    (grad,) = torch.autograd.grad(run(impl, h), h)
    torch.testing.assert_close(grad.cpu(), torch.tensor([[-0.5] * 4, [0.5] * 4]))
    h = torch.tensor([[0.0, 0.0], [1e-44, 4e-44]], dtype=torch.float32, device=impl[1], requires_grad=True)
    (grad,) = torch.autograd.grad(run(impl, h), h)
    rows = torch.tensor([1e-44, 4e-44]).double()  # float32 subnormals (1.4e-44, 4.2e-44), exactly
    expected = (rows / rows.norm()).float()
    torch.testing.assert_close(grad.cpu(), torch.stack([-expected, expected]), rtol=1e-6, atol=0)


def test_torch_func_transforms_differentiate_it():
    """torch.func.grad, jacrev and hessian do not differentiate through a custom op's registered
    backward (they raised); inside them the length is plain torch operations, with the same
    derivatives as the kernels, a zero-length segment included."""
    h = randn(5, 3, seed=13)
    h[2] = h[1]
    x = h.clone().requires_grad_()
    (grad,) = torch.autograd.grad(trajectory_length(x), x, create_graph=True)
    torch.testing.assert_close(torch.func.grad(trajectory_length)(h), grad.detach())
    torch.testing.assert_close(torch.func.jacrev(trajectory_length)(h), grad.detach())
    hessian = torch.stack([torch.autograd.grad(g, x, retain_graph=True)[0] for g in grad.reshape(-1)])
    torch.testing.assert_close(torch.func.hessian(trajectory_length)(h), hessian.reshape(5, 3, 5, 3))
