"""The CPU dropout (nn/dropout.py) and the attention path that uses it are valid dropouts: each element
kept independently with probability 1 - p, kept ones scaled by exactly 1/(1 - p), identity in eval mode."""

import math

import pytest
import torch
import torch.nn.functional as F

from fractalgen.nn.attention import Attention, attention_with_dropout
from fractalgen.nn.dropout import Dropout, dropout, keep_noise_fp32


@pytest.mark.parametrize("p", [0.1, 0.37, 0.5])
@pytest.mark.parametrize("inplace", [False, True])
def test_keep_rate_and_scale(p, inplace):
    torch.manual_seed(0)
    n = 1 << 22
    out = dropout(torch.ones(n), p, training=True, inplace=inplace)
    keep = 1.0 - p
    values = out.unique()
    assert values.tolist() == [0.0, torch.tensor(1.0 / keep).item()]  # exactly 0 or 1/(1-p) in fp32
    kept = (out != 0).double()
    sd = math.sqrt(keep * p / n)
    assert abs(kept.mean().item() - keep) < 5 * sd  # the keep rate, within 5 standard errors
    # Even and odd elements take their bits from the low and the high half of one int64 draw.
    for half in (kept[0::2], kept[1::2]):
        assert abs(half.mean().item() - keep) < 5 * sd * math.sqrt(2)
    # Independent draws: neighbours (and elements far apart) are kept together at rate keep^2.
    for lag in (1, 2, 1000):
        both = (kept[:-lag] * kept[lag:]).mean().item()
        assert abs(both - keep * keep) < 6 * math.sqrt(keep * keep * (1 - keep * keep) / n)
    assert abs(out.double().mean().item() - 1.0) < 5 * sd / keep  # expectation kept


@pytest.mark.parametrize("n", [1, 2, 7, 1001])
def test_odd_sizes(n):
    torch.manual_seed(n)
    noise = keep_noise_fp32((n, 3), 0.8)
    assert noise.shape == (n, 3)
    assert set(noise.unique().tolist()) <= {0.0, torch.tensor(1 / 0.8).item()}
    assert keep_noise_fp32((2, 0), 0.8).shape == (2, 0)


def test_bf16_scale_and_rate():
    torch.manual_seed(1)
    out = dropout(torch.ones(1 << 20, dtype=torch.bfloat16), 0.1, training=True)
    assert out.dtype == torch.bfloat16
    assert set(out.unique().tolist()) == {0.0, torch.tensor(1 / 0.9, dtype=torch.bfloat16).item()}
    assert abs((out != 0).double().mean().item() - 0.9) < 5 * math.sqrt(0.09 / (1 << 20))


def test_eval_mode_and_zero_p_are_identity():
    x = torch.randn(4, 7, 16)
    module = Dropout(0.3, inplace=True).eval()
    assert module(x) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_gradient_is_the_same_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 128, requires_grad=True)
    y = dropout(x * 1.0, 0.25, training=True, inplace=True)
    y.sum().backward()
    scale = torch.tensor(1 / 0.75).item()
    assert torch.equal(x.grad, (y != 0).float() * scale)
    assert torch.equal(y, torch.where(y != 0, x.detach() * scale, 0.0))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_dropout_zero_is_sdpa(causal):
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert torch.allclose(attention_with_dropout(q, k, v, causal, 0.0), expected, atol=1e-6)


def test_attention_dropout_rate():
    """With dropout p, the attention output's expectation over masks is the plain attention's."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 1, 6, 4) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    draws = attention_with_dropout(q.expand(20000, -1, -1, -1), k.expand(20000, -1, -1, -1),
                                   v.expand(20000, -1, -1, -1), False, 0.3)
    assert torch.allclose(draws.mean(0, keepdim=True), expected, atol=0.03)


def test_attention_eval_ignores_dropout():
    torch.manual_seed(5)
    attn = Attention(32, 4, bias=True, attn_dropout=0.5, proj_dropout=0.5).eval()
    x = torch.randn(2, 5, 32)
    assert torch.equal(attn(x), attn(x))
