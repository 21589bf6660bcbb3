"""The model zoo: CNNs built with plain torch.nn, saved as TorchScript: CIFAR-shaped
classics here, one reduced member of each well-known family in `zoo_families`.

Each model starts from a random initialization drawn from `seed`. The saved archive
carries a `facto_edge.json` extra file with the input shape, class count and input
normalization, which `facto-edge export` reads as its defaults.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facto_edge import zoo_families as fam
from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.checkpoint import write_atomic
from facto_edge.safe_io import check_output_file

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTRA_FILE = "facto_edge.json"


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> list:
    pad = k // 2
    return [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3, 1)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """The usual CIFAR ResNet-18: 3x3 stem, no max-pool, widths 64-128-256-512."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, 64, 3, 1)
        self.relu = nn.ReLU()
        layers, c_in = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1))
            )
            c_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, c_out, 1)
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 (width 1.0) with a CIFAR stem: stride 1 at the stem and the second stage."""

    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 32, 3, 1), nn.ReLU6()]
        c_in = 32
        for expand, c_out, repeats, stride in self.CONFIG:
            for i in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        layers += [*_conv_bn(c_in, 1280, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class VGG11BNCifar(nn.Module):
    """VGG-11 with batch norm for 32x32 input: five max-pools down to 1x1, one Linear."""

    CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in self.CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [*_conv_bn(c_in, int(item), 3), nn.ReLU()]
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class SimpleCNN(nn.Module):
    """A small CNN for quick runs: three conv+BN+ReLU, a max-pool, two Linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32, 3), nn.ReLU(),
            *_conv_bn(32, 64, 3, 2), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            *_conv_bn(64, 64, 3), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(64, 128)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.relu(self.hidden(x)))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, ...] = (3, 32, 32)
    normalization: str = "cifar"  # cifar, imagenet or none (mean 0.5, std 0.5)


_ENTRIES = [
    ZooEntry("resnet18_cifar", ResNet18Cifar, "ResNet-18, CIFAR stem"),
    ZooEntry("mobilenetv2_cifar", MobileNetV2Cifar, "MobileNetV2, CIFAR"),
    ZooEntry("vgg11_bn_cifar", VGG11BNCifar, "VGG-11 with BN, CIFAR"),
    ZooEntry("simple_cnn", SimpleCNN, "3 conv + 2 linear, for quick runs"),
    ZooEntry("mobilenetv3_small", fam.MobileNetV3Small, "MobileNetV3-Small: hard-swish, SE"),
    ZooEntry("efficientnet_b0", fam.EfficientNetB0, "EfficientNet-B0 for 32x32: SiLU, SE"),
    ZooEntry("shufflenetv2", fam.ShuffleNetV2, "ShuffleNetV2 0.5x: chunk, channel shuffle"),
    ZooEntry("resnet18_imagenet", fam.ResNet18ImageNet, "ResNet-18, 7x7 stem and max-pool",
             (3, 128, 128), "imagenet"),
    ZooEntry("densenet", fam.DenseNet, "DenseNet-BC, growth 12: concatenation"),
    ZooEntry("squeezenet", fam.SqueezeNet, "SqueezeNet 1.1: fire modules, conv classifier"),
    ZooEntry("convnext_atto", fam.ConvNeXtAtto, "ConvNeXt-Atto: channels-last LayerNorm, GELU"),
    ZooEntry("mcunet_like", fam.MCUNetLike, "MCUNet-like, written with torch.nn.functional"),
    ZooEntry("ds_cnn", fam.DSCNN, "DS-CNN keyword spotting on 1x49x10 MFCC, 10x4 kernel",
             (1, 49, 10), "none"),
    ZooEntry("kws_conv1d", fam.KWSConv1d, "Conv1d keyword spotting on 40x98 MFCC frames",
             (40, 98), "none"),
    ZooEntry("resnet20_cifar", fam.ResNet20Cifar, "ResNet-20, option-A shortcuts"),
]  # fmt: skip
ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def entry(name: str) -> ZooEntry:
    """The zoo entry `name`, or FactoEdgeError listing the names there are."""
    if name not in ZOO:
        raise FactoEdgeError(f"unknown zoo model {name!r}; expected one of: {', '.join(ZOO)}")
    return ZOO[name]


def build(
    name: str, seed: int = 0, num_classes: int = 10, in_channels: int | None = None
) -> nn.Module:
    """Build zoo model `name` in eval mode with weights drawn from `seed`; `in_channels`
    defaults to the model's own input (3 for images, 1 for DS-CNN, 40 for the Conv1d net)."""
    e = entry(name)
    channels = e.input_shape[0] if in_channels is None else in_channels
    for what, value in (("--num-classes", num_classes), ("input channels", channels)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise FactoEdgeError(f"{what} must be a positive integer, found {value!r}")
    torch.manual_seed(seed)
    return e.build(num_classes=num_classes, in_channels=channels).eval()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def metadata(input_shape: tuple[int, ...], num_classes: int, normalization: str = "cifar") -> dict:
    """The facto_edge.json extra file: what export needs to know about the input.
    Three channels take the `normalization` preset (cifar or imagenet); others 0.5/0.5."""
    c = input_shape[0]
    preset = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
    if c == 3 and normalization in preset:
        mean, std = list(preset[normalization][0]), list(preset[normalization][1])
    else:
        mean, std = [0.5] * c, [0.5] * c
    return {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "normalization": {"mean": mean, "std": std},
    }


def save_torchscript(model: nn.Module, path: str | Path, meta: dict) -> Path:
    """Script `model` and save it with `meta` as its facto_edge.json extra file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(model.eval())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={EXTRA_FILE: json.dumps(meta)})
    return write_atomic(path, lambda f: f.write(buf.getvalue()))


def is_zoo_archive(path: Path) -> bool:
    """Whether `path` is a TorchScript archive carrying facto_edge.json (zoo wrote it)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(f"/extra/{EXTRA_FILE}") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def write(
    name: str,
    out: str | Path,
    seed: int = 0,
    num_classes: int = 10,
    input_shape: tuple[int, ...] | None = None,
    force: bool = False,
) -> Path:
    """Build zoo model `name` and write it as a TorchScript archive to `out`; the input
    shape defaults to the model's own (3x32x32, 3x128x128, 1x49x10, 40x98). An existing
    `out` is replaced only with `force`, and only when zoo wrote it."""
    out = Path(out)
    check_output_file(out, force, is_zoo_archive, "a zoo model archive", "zoo")
    e = entry(name)
    shape = tuple(input_shape or e.input_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise FactoEdgeError(f"--input-shape must be CxL or CxHxW, positive sizes, found {shape}")
    model = build(name, seed=seed, num_classes=num_classes, in_channels=shape[0])
    return save_torchscript(model, out, metadata(shape, num_classes, e.normalization))
