import pytest
import torch

from opzo.losses import InstantLoss


@pytest.mark.parametrize("kind,gamma", [("ce", 0.0), ("mse", 1.0), ("mix", 0.05), ("mix", 0.5)])
def test_closed_form_error_equals_autograd(kind, gamma):
    o = torch.randn(7, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (7,))
    loss = InstantLoss(kind, gamma)
    loss.per_sample(o, y).sum().backward()
    assert torch.allclose(loss.error(o.detach(), y), o.grad, atol=1e-12, rtol=0)


def test_loss_values_match_torch_definitions():
    o = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2])
    target = torch.nn.functional.one_hot(y, 4).double()
    ce = torch.nn.functional.cross_entropy(o, y, reduction="none")
    mse = ((o - target) ** 2).mean(1)
    got = InstantLoss("mix", 0.3).per_sample(o, y)
    assert torch.allclose(got, 0.7 * ce + 0.3 * mse)


def test_bad_loss_options_are_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        InstantLoss("hinge")
    with pytest.raises(ValueError, match="gamma"):
        InstantLoss("mix", 1.5)
