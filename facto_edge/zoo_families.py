"""The zoo's well-known families, written as their authors wrote them, in plain torch.nn.

Each is a reduced member of its family (fewer blocks, narrower), small enough to export
and test in seconds at CIFAR-size input, but built with the constructs that family's
public code uses: hard-swish and squeeze-excitation, SiLU, chunk and channel shuffle,
concatenation, channels-last LayerNorm with layer scale, torch.nn.functional calls,
10x4 kernels on MFCC images, Conv1d on MFCC frames, option-A shortcuts.
Every model scripts with torch.jit.script (the zoo saves TorchScript archives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_act(c_in, c_out, k=3, stride=1, groups=1, act: type[nn.Module] | None = nn.ReLU):
    """Conv (padding k//2, no bias) + BatchNorm + activation, as nn.Sequential."""
    pad = (k[0] // 2, k[1] // 2) if isinstance(k, tuple) else k // 2
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: global pool, 1x1 reduce, activation, 1x1 expand, gate."""

    def __init__(self, c: int, reduced: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, reduced, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(reduced, c, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class MBConv(nn.Module):
    """Inverted residual with optional SE: 1x1 expand, k x k depthwise, SE, 1x1 project."""

    def __init__(self, c_in, hidden, c_out, k, stride, se: bool, act, gate, se_reduce=4):
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != c_in:
            layers.append(conv_bn_act(c_in, hidden, 1, act=act))
        layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // se_reduce), act, gate))
        layers.append(conv_bn_act(hidden, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small (reduced): hard-swish, SE gated by hard-sigmoid, CIFAR stem."""

    # kernel, hidden, out, SE, activation, stride
    CONFIG = (
        (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    )  # fmt: skip

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(in_channels, 16, 3, 1, act=nn.Hardswish)]
        c_in = 16
        for k, hidden, c_out, se, act, stride in self.CONFIG:
            a = nn.ReLU if act == "RE" else nn.Hardswish
            layers.append(MBConv(c_in, hidden, c_out, k, stride, se, a, nn.Hardsigmoid))
            c_in = c_out
        layers.append(conv_bn_act(c_in, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(576, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 scaled for 32x32 (width 0.5, one block per stage): SiLU, SE gated
    by sigmoid, stem stride 1."""

    # expand, kernel, stride, out (width 0.5 of B0's 16-24-40-80-112-192-320)
    CONFIG = ((1, 3, 1, 8), (6, 3, 2, 16), (6, 5, 2, 24), (6, 3, 2, 40),
              (6, 5, 1, 56), (6, 5, 2, 96), (6, 3, 1, 160))  # fmt: skip

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(in_channels, 16, 3, 1, act=nn.SiLU)]
        c_in = 16
        for expand, k, stride, c_out in self.CONFIG:
            hidden = c_in * expand
            se = MBConv(c_in, hidden, c_out, k, stride, True, nn.SiLU, nn.Sigmoid, se_reduce=4)
            layers.append(se)
            c_in = c_out
        layers.append(conv_bn_act(c_in, 640, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(640, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as torchvision writes it."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (chunk) or downsample, two branches, concat, shuffle."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        half = c_out // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn_act(c_in, c_in, 3, stride, groups=c_in, act=None),
                conv_bn_act(c_in, half, 1),
            )
        else:
            self.branch1 = nn.Sequential()
        b2_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn_act(b2_in, half, 1),
            conv_bn_act(half, half, 3, stride, groups=half, act=None),
            conv_bn_act(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 0.5x (one unit after each downsample), CIFAR stem without max-pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(in_channels, 24, 3, 1)]
        c_in = 24
        for c_out in (48, 96, 192):
            layers += [ShuffleUnit(c_in, c_out, 2), ShuffleUnit(c_out, c_out, 1)]
            c_in = c_out
        layers.append(conv_bn_act(c_in, 512, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean([2, 3]))


class BasicBlock(nn.Module):
    """ResNet basic block with a 1x1 projection shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(c_in, c_out, 3, stride), conv_bn_act(c_out, c_out, 3, act=None)
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn_act(c_in, c_out, 1, stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet18ImageNet(nn.Module):
    """torchvision's ResNet-18 layout: 7x7/2 stem, 3x3/2 max-pool, widths 64-128-256-512."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn_act(in_channels, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, c_in = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1))
            )
            c_in = width
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.maxpool(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 (4k), BN-ReLU-3x3 (k), concatenated to its input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """A small DenseNet-BC (growth 12, three blocks of 4 layers, compression 0.5)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, growth: int = 12) -> None:
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
        for i in range(3):
            for _ in range(4):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < 2:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False)]
                layers.append(nn.AvgPool2d(2))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, c_in: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU(inplace=True))
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 (CIFAR stem, ceil-mode max-pools, a 1x1 conv classifier, no Linear)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 64, 256, 256),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's downsampling norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise, channels-last LayerNorm, Linear 4x, GELU, Linear, layer scale."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtAtto(nn.Module):
    """ConvNeXt-Atto (dims 40-80-160-320, depths 2-2-6-2), a 2x2 patchify stem for 32x32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depths=(2, 2, 6, 2)) -> None:
        super().__init__()
        dims = (40, 80, 160, 320)
        stages: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), LayerNorm2d(dims[0]))
        ]
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if i > 0:
                stages.append(
                    nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2))
                )
            stages.append(nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)]))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stages(x).mean([-2, -1])))


class FunctionalBlock(nn.Module):
    """An MCUNet-style inverted residual whose activations are torch.nn.functional calls."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        if self.use_residual:
            y = y + x
        return y


class MCUNetLike(nn.Module):
    """An MCUNet/ProxylessNAS-like net (mixed 3/5/7 kernels) written with F.relu6 and
    x.view(x.size(0), -1). Its global pool is F.adaptive_avg_pool2d(x, 1): MCUNet's own
    F.avg_pool2d(x, x.shape[2:]) does not script (a kernel size computed from a shape);
    `pool` below is where a subclass puts it back (the exporter then takes torch.onnx's
    dynamo path)."""

    # out, kernel, stride, expand
    CONFIG = ((16, 3, 1, 1), (24, 7, 2, 3), (24, 3, 1, 4), (40, 5, 2, 3), (40, 5, 1, 4),
              (80, 7, 2, 3), (96, 3, 1, 4))  # fmt: skip

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for c_out, k, stride, expand in self.CONFIG:
            blocks.append(FunctionalBlock(c_in, c_out, k, stride, expand))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(F.relu6(self.stem_bn(self.stem(x)))))
        return self.classifier(x.view(x.size(0), -1))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1)


class DSCNN(nn.Module):
    """DS-CNN-S for keyword spotting (Zhang et al., "Hello Edge") on 1x49x10 MFCC images:
    a 10x4 stride-2 first conv, four depthwise-separable blocks, average pool."""

    def __init__(self, num_classes: int = 12, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(in_channels, width, (10, 4), 2)]
        for _ in range(4):
            layers.append(conv_bn_act(width, width, 3, groups=width))
            layers.append(conv_bn_act(width, width, 1))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(self.dropout(x), 1))


class KWSConv1d(nn.Module):
    """A 1-D keyword-spotting CNN over MFCC frames (input 40 coefficients x 98 frames):
    Conv1d + BatchNorm1d + ReLU blocks, max-pools, global average, Linear."""

    def __init__(self, num_classes: int = 12, in_channels: int = 40) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, stride in ((64, 1), (64, 2), (96, 1), (96, 2), (128, 1)):
            layers += [nn.Conv1d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm1d(c_out)]
            layers.append(nn.ReLU())
            c_in = c_out
        layers.append(nn.MaxPool1d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ShortcutA(nn.Module):
    """ResNet "option A" shortcut: subsample by 2 and zero-pad the channels."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BlockA(nn.Module):
    """CIFAR ResNet basic block with the option-A (parameter-free) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = ShortcutA(c_out // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20Cifar(nn.Module):
    """The CIFAR ResNet-20 of He et al. as the most used public port writes it (16-32-64
    channels, three blocks per stage, option-A shortcuts, F.avg_pool2d over the map)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                blocks.append(BlockA(c_in, width, 2 if i > 0 and j == 0 else 1))
                c_in = width
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.view(out.size(0), -1))
