"""The optional LSTM forget-gate bias (`network.forget_bias`): set where asked, absent otherwise."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rnnserve.training.model import NetworkSpec, RecurrentNet  # noqa: E402
from rnnserve.training.recipe import build_network  # noqa: E402

pytestmark = pytest.mark.torch

HIDDEN = 12


def _spec(cell: str = "lstm") -> NetworkSpec:
    return NetworkSpec(
        cell=cell,  # type: ignore[arg-type]
        layers=2,
        hidden_size=HIDDEN,
        embedding_size=5,
        vocab_size=7,
        output_size=7,
    )


def _weights(net: RecurrentNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_without_forget_bias_the_network_is_exactly_pytorchs() -> None:
    torch.manual_seed(3)
    plain = _weights(RecurrentNet(_spec()))
    torch.manual_seed(3)
    built = _weights(build_network(_spec()))
    assert plain.keys() == built.keys()
    assert all(torch.equal(plain[k], built[k]) for k in plain)


def test_forget_bias_sets_only_the_forget_gate_and_draws_no_random_numbers() -> None:
    torch.manual_seed(3)
    plain = _weights(RecurrentNet(_spec()))
    torch.manual_seed(3)
    net = build_network(_spec(), forget_bias=1.0)
    after = torch.rand(1)  # the RNG stream continues as without the option
    torch.manual_seed(3)
    RecurrentNet(_spec())
    assert torch.equal(after, torch.rand(1))
    biased = _weights(net)
    forget = slice(HIDDEN, 2 * HIDDEN)  # PyTorch's gate order: input, forget, cell, output
    for layer in range(2):
        ih, hh = f"recurrent.bias_ih_l{layer}", f"recurrent.bias_hh_l{layer}"
        assert torch.all(biased[ih][forget] == 1.0)
        assert torch.all(biased[hh][forget] == 0.0)
        for name in (ih, hh):  # the other three gates keep PyTorch's values
            keep = torch.ones(4 * HIDDEN, dtype=torch.bool)
            keep[forget] = False
            assert torch.equal(biased[name][keep], plain[name][keep])
    for name in plain:
        if "bias" not in name:
            assert torch.equal(biased[name], plain[name])


def test_forget_bias_is_refused_for_cells_without_a_forget_gate() -> None:
    with pytest.raises(ValueError, match="forget_bias"):
        build_network(_spec("gru"), forget_bias=1.0)
