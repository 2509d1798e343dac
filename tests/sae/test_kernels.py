import pytest
import torch
import torch.nn.functional as F

from sae.kernels import scatter_rows, sparse_decode, topk_encode


@pytest.mark.parametrize(
    ("method", "chunk"), [("csr", None), ("index_add", None), ("index_add", 80)]
)
def test_scatter_rows_equals_dense(method, chunk, monkeypatch):
    if chunk:  # the index_add path in pieces of two tokens
        monkeypatch.setattr("sae.kernels._INDEX_ADD_CHUNK", chunk)
    torch.manual_seed(0)
    indices = torch.randint(0, 40, (30, 5))
    weights, inputs = torch.randn(30, 5), torch.randn(30, 7)
    dense = torch.zeros(30, 40).scatter_add_(1, indices, weights)
    expected = dense.T @ inputs
    assert torch.allclose(scatter_rows(indices, weights, inputs, 40, method), expected, atol=1e-5)


def test_topk_encode_gradients_match_dense_autograd():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    w = torch.randn(48, 16, requires_grad=True)
    b_enc = torch.randn(48, requires_grad=True)
    b_dec = torch.randn(16, requires_grad=True)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::4] = True
    values, indices, aux_values, aux_indices = topk_encode(x, w, b_enc, b_dec, 6, dead, 5)
    assert values.shape == (64, 6) and aux_values.shape == (64, 5)
    assert dead[aux_indices].all()
    g, g_aux = torch.randn_like(values), torch.randn_like(aux_values)
    torch.autograd.backward([values, aux_values], [g, g_aux])
    sparse = [t.grad.clone() for t in (w, b_enc, b_dec)]
    for t in (w, b_enc, b_dec):
        t.grad = None
    pre = F.relu(F.linear(x - b_dec, w, b_enc))
    assert torch.equal(pre.topk(6, sorted=False).values.sort(1).values, values.sort(1).values)
    torch.autograd.backward([pre.gather(1, indices), pre.gather(1, aux_indices)], [g, g_aux])
    for got, tensor in zip(sparse, (w, b_enc, b_dec), strict=True):
        assert torch.allclose(got, tensor.grad, rtol=1e-4, atol=1e-4)


def test_sparse_decode_equals_dense_product():
    torch.manual_seed(0)
    indices = torch.randint(0, 20, (8, 3))
    values, w = torch.rand(8, 3), torch.randn(20, 5)
    dense = torch.zeros(8, 20).scatter_add_(1, indices, values)
    assert torch.allclose(sparse_decode(indices, values, w), dense @ w, atol=1e-6)
