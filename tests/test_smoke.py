import torch

import carousel


def test_lstm_matches_torch_nn():
    ref = torch.nn.LSTM(3, 4)
    ours = carousel.LSTM(3, 4)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    (y1, (_, c1)), (y2, (_, c2)) = ref(x), ours(x)
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(c2, c1)
