"""Bad input fails loudly, at the boundary, with a ValueError naming what was expected and
what came; the error is also what torch.nn raises in the same case (RuntimeError for shapes,
TypeError for types), with torch's wording where PyTorch's tests match on it."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import carousel


@pytest.fixture
def lstm():
    return carousel.LSTM(3, 4, num_layers=2)


X = torch.randn(5, 2, 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.randn(5, 2, 3, 1)), r"rank 3.* got rank 4 with shape \(5, 2, 3, 1\)"),
        (lambda m: m(torch.randn(5)), "got rank 1"),
        (
            lambda m: m(torch.randn(5, 2, 7)),
            r"input.size\(-1\) must be equal to input_size. Expected 3, got 7",
        ),
        (lambda m: m(torch.randn(0, 2, 3)), "Expected sequence length to be larger than 0"),
        (lambda m: m(X.double()), "dtype torch.float32 .* got torch.float64"),
        (lambda m: m(torch.ones(5, 2, 3, dtype=torch.long)), "floating-point dtype"),
        (lambda m: m(X.to("meta")), "not at the same device: expected input on cpu .* got meta"),
        (lambda m: m([[1.0]]), "Tensor or PackedSequence; got list"),
        (lambda m: m(X, torch.zeros(2, 2, 4)), r"tuple \(h0, c0\) for a lstm layer"),
        (lambda m: m(X, (torch.zeros(2, 2, 4),)), r"tuple \(h0, c0\)"),
        (
            lambda m: m(X, (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))),
            r"Expected hidden\[0\] size \(2, 2, 4\), got \[2, 3, 4\]",
        ),
        (
            lambda m: m(X, (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4))),
            r"Expected hidden\[1\] size \(2, 2, 4\), got \[1, 2, 4\]",
        ),
        (
            lambda m: m(X, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4).double())),
            "c0 of dtype torch.float32",
        ),
        (
            lambda m: m(X, lengths=[5, 6]),
            r"lengths must lie in 1..T = 1..5; got values from 5 to 6",
        ),
        (lambda m: m(X, lengths=[0, 5]), "lengths must lie in 1..T"),
        (lambda m: m(X, lengths=[5]), r"shape \(B,\) = \(2,\); got \(1,\)"),
        (lambda m: m(X, lengths=[2.5, 3.0]), "lengths must be integers"),
        (lambda m: m(X, lengths="abc"), "lengths must be B = 2 integers"),
        (lambda m: m(pack_padded_sequence(X, [5, 3]), lengths=[5, 3]), "not both"),
        (lambda m: m(X, reset=torch.tensor([True])), r"reset must be a \(B,\) = \(2,\)"),
    ],
)
def test_bad_forward_arguments(lstm, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call(lstm)
    assert isinstance(info.value, RuntimeError | TypeError)  # what torch.nn raises
    assert isinstance(info.value, carousel.ArgumentError)


def test_bad_state_for_single_state_cells():
    gru = carousel.GRU(3, 4)
    with pytest.raises(ValueError, match="a tensor h0 for a gru layer"):
        gru(X, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 4\), got \[1, 2, 4\]"):
        gru(torch.randn(5, 3), torch.zeros(1, 2, 4))  # unbatched input wants (L·D, H)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: carousel.LSTM(0, 4), "input_size must be greater than zero .*got 0"),
        (lambda: carousel.LSTM(3, 2.5), "hidden_size should be of type int, got: float .*2.5"),
        (lambda: carousel.GRU(3, 4, num_layers=0), "num_layers must be greater than zero"),
        (lambda: carousel.RNN(3, 4, dropout=1.5), r"dropout should be a number in range \[0, 1\]"),
        (lambda: carousel.RNN(3, 4, bidirectional=1), "bidirectional should be of type bool"),
        (lambda: carousel.RNN(3, 4, bias=0), "bias should be of type bool, got: int"),
        (lambda: carousel.GRU(3, 4, proj_size=2), "proj_size argument is only supported for LSTM"),
        (lambda: carousel.RNN(3, 4, proj_size=0), "proj_size argument is only supported for LSTM"),
        (lambda: carousel.RNN(3, 4, nonlinearity="gelu"), "nonlinearity must be one of"),
        (lambda: carousel.LSTM(3, 4, variant="lstm97"), "unknown LSTM variant 'lstm97'"),
        (lambda: carousel.LSTM(3, 4, variant="gru"), "unknown LSTM variant 'gru'"),
        (lambda: carousel.LSTM(3, 4, input_activation="softsign"), "input_activation must be"),
        (lambda: carousel.LSTM(3, 4, input_gate=False, coupled=True), "coupled"),
        (lambda: carousel.LSTM(3, 4, forget_bias=1.0, bias=False), "needs bias=True"),
        (lambda: carousel.LSTM(3, 4, backend="cuda-magic"), "backend must be one of"),
        (lambda: carousel.make_layer("lstm3000", 3, 4), "unknown cell 'lstm3000'"),
    ],
)
def test_bad_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("build", "torch_type"),
    [
        (lambda: carousel.LSTM(3.0, 4), TypeError),
        (lambda: carousel.GRU("10", 4), TypeError),
        (lambda: carousel.RNN(3, 4, batch_first="False"), TypeError),
        (lambda: carousel.LSTM(-1, 4), ValueError),
    ],
)
def test_construction_errors_are_torch_types(build, torch_type):
    with pytest.raises(torch_type) as info:
        build()
    assert isinstance(info.value, ValueError)  # carousel's contract


def test_errors_catchable_as_runtime_error():
    """Code written against torch.nn (``except RuntimeError``) catches carousel's shape errors;
    code written against carousel (``except ValueError``) keeps working."""
    gru = carousel.GRU(3, 4)
    for handler in (RuntimeError, ValueError, carousel.ArgumentError):
        with pytest.raises(handler):
            gru(torch.randn(5, 2, 4))
    assert issubclass(carousel.ArgumentTypeError, TypeError)
    assert issubclass(carousel.ArgumentTypeError, carousel.ArgumentError)
