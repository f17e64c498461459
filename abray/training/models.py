"""Models: small CNNs for digits and MNIST and an MLP for the teacher tasks (each with and without BatchNorm), a
small LayerNorm transformer for the sequence task, the CIFAR ResNets of He et al. (2016), torchvision's ResNet-50."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import SEQUENCE_LENGTH, SEQUENCE_VOCAB, TEACHER_INPUTS


def conv_block(cin: int, cout: int, kernel: int, stride: int, batchnorm: bool) -> list[nn.Module]:
    """A same-padded convolution, then BatchNorm (which makes the convolution's bias redundant) if asked, then ReLU."""
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers for 8x8 inputs (about 40k weights)."""

    def __init__(self, num_classes: int = 10, batchnorm: bool = False, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(*conv_block(1, width // 2, 3, 1, batchnorm),
                                      *conv_block(width // 2, width, 3, 1, batchnorm), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 16, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    """A 64-1000-1000-10 perceptron for 8x8 inputs: about 1.08 M weights, for throughput studies."""

    def __init__(self, num_classes: int = 10, hidden: int = 1000):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class MnistCNN(nn.Module):
    """Two strided convolutions (5x5 then 3x3, 28 -> 14 -> 7 pixels) and two linear layers for 28x28 inputs,
    about 0.1 M weights: cheap enough for a delay sweep on a CPU."""

    def __init__(self, num_classes: int = 10, batchnorm: bool = False, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(*conv_block(1, width // 2, 5, 2, batchnorm),
                                      *conv_block(width // 2, width, 3, 2, batchnorm))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 49, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A ReLU perceptron on flat inputs, `depth` hidden layers of `hidden` units, optionally with BatchNorm after
    each hidden linear layer (the student of the teacher tasks)."""

    def __init__(self, inputs: int, num_classes: int, hidden: int = 128, depth: int = 2, batchnorm: bool = False):
        super().__init__()
        layers, width = [nn.Flatten()], inputs
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


class SequenceTransformer(nn.Module):
    """A small pre-LayerNorm transformer encoder that classifies token sequences: token and position embeddings,
    `layers` blocks of self-attention and a ReLU feed-forward layer, mean pooling, a final LayerNorm and a linear
    read-out. Neither a CNN nor BatchNorm-based."""

    def __init__(self, num_classes: int, vocab: int = SEQUENCE_VOCAB, length: int = SEQUENCE_LENGTH,
                 dim: int = 32, heads: int = 4, layers: int = 1):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(length, dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.encoder(self.tokens(x) + self.positions[: x.shape[1]])
        return self.head(self.norm(h.mean(1)))


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; the shortcut is option A of He et al.: subsample and zero-pad channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16-32-64 channels, n blocks a stage (He et al. 2016, section 4.2)."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-50, randomly initialised (weights are never downloaded)."""
    import torchvision

    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


MODELS = {
    "digits_cnn": lambda num_classes: DigitsCNN(num_classes, batchnorm=False),
    "digits_cnn_bn": lambda num_classes: DigitsCNN(num_classes, batchnorm=True),
    "digits_mlp": DigitsMLP,
    "mnist_cnn": lambda num_classes: MnistCNN(num_classes, batchnorm=False),
    "mnist_cnn_bn": lambda num_classes: MnistCNN(num_classes, batchnorm=True),
    "teacher_mlp": lambda num_classes: MLP(TEACHER_INPUTS, num_classes),
    "teacher_mlp_bn": lambda num_classes: MLP(TEACHER_INPUTS, num_classes, batchnorm=True),
    "seq_transformer": SequenceTransformer,
    "resnet20": lambda num_classes: CifarResNet(20, num_classes),
    "resnet32": lambda num_classes: CifarResNet(32, num_classes),
    "resnet56": lambda num_classes: CifarResNet(56, num_classes),
    "resnet50": resnet50,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {name!r}")
    return MODELS[name](num_classes)
