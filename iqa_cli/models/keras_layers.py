"""PyTorch layers that compute exactly what their Keras 2 namesakes compute.

Networks first released as Keras models (ASNA, its learned sorter) are rebuilt natively so that
their imported weights give the same numbers. The differences that matter:

- ``padding='same'`` with a stride > 1 (or an even kernel) pads the *bottom/right* side more when
  the total padding is odd (TensorFlow's rule); PyTorch's symmetric ``padding=`` cannot express it.
- Keras' ``hard_sigmoid`` (the ConvLSTM2D recurrent activation) is clip(0.2 x + 0.5, 0, 1), not
  PyTorch's hardsigmoid (x / 6 + 1/2).
- ConvLSTM2D packs its gates i, f, c, o along the output channels; the recurrent convolution has
  no bias and always pads 'same'.
- PReLU keeps one slope per position *and* channel unless its ``shared_axes`` say otherwise.
- Flatten reads NHWC (channels last) order; :func:`flatten_channels_last` reproduces it so Dense
  kernels only need a transpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 is the weight of the old running value; PyTorch's is the new one's


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' rule: output ceil(size / stride), the odd
    extra pixel after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with Keras 'same' padding for any stride and kernel (weights OIHW as usual)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride)


class SameConv1d(nn.Conv1d):
    """Conv1d with Keras 'same' padding (an even kernel pads one more on the right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = same_padding(x.shape[-1], self.kernel_size[0])
        if left == right:
            return F.conv1d(x, self.weight, self.bias, 1, left)
        return F.conv1d(F.pad(x, (left, right)), self.weight, self.bias)


def keras_batch_norm2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def keras_batch_norm1d(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2's hard_sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


RECURRENT_ACTIVATIONS = {"hard_sigmoid": hard_sigmoid, "sigmoid": torch.sigmoid}


class ConvLSTM2d(nn.Module):
    """Keras ConvLSTM2D(filters, kernel, padding='same', return_sequences=False): the last hidden state.

    Input (N, T, C, H, W) -> (N, filters, H, W). Gates i, f, c, o are consecutive blocks of the
    4*filters output channels of both convolutions (Keras' order, which is also PyTorch LSTM's):
        i = r(Wx_i + Wh_i), f = r(Wx_f + Wh_f), c = f c + i tanh(Wx_c + Wh_c), o = r(Wx_o + Wh_o),
        h = o tanh(c),  r = the recurrent activation (Keras default hard_sigmoid).
    """

    def __init__(self, in_channels: int, filters: int, kernel_size: int, recurrent_activation: str = "hard_sigmoid"):
        super().__init__()
        if recurrent_activation not in RECURRENT_ACTIVATIONS:
            raise ValueError(f"recurrent_activation must be one of {', '.join(RECURRENT_ACTIVATIONS)}, "
                             f"got {recurrent_activation!r}")
        self.filters = filters
        self.recurrent_activation = recurrent_activation
        self.input_conv = SameConv2d(in_channels, 4 * filters, kernel_size)
        self.recurrent_conv = SameConv2d(filters, 4 * filters, kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        gate = RECURRENT_ACTIVATIONS[self.recurrent_activation]
        from_input = self.input_conv(x.reshape(n * t, c, h, w)).reshape(n, t, 4 * self.filters, h, w)
        hidden = x.new_zeros(n, self.filters, h, w)
        cell = torch.zeros_like(hidden)
        for step in range(t):
            i, f, g, o = (from_input[:, step] + self.recurrent_conv(hidden)).chunk(4, dim=1)
            cell = gate(f) * cell + gate(i) * torch.tanh(g)
            hidden = gate(o) * torch.tanh(cell)
        return hidden


class KerasPReLU(nn.Module):
    """Keras PReLU on channels-first input: slopes of shape (C, L) (Keras' default, one per
    position and channel) or (C, 1) (``shared_axes`` over the positions)."""

    def __init__(self, channels: int, length: int = 1, init: float = 0.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((channels, length), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.alpha * x)


def flatten_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, prod) in Keras Flatten's channels-last order."""
    return x.movedim(1, -1).flatten(1)
