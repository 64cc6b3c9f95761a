"""PyTorch's side of bench/zoo_steps.py: a training step (forward, cross
entropy, backward, SGD with momentum) of ResNet-18, ResNet-50, VGG-16,
DenseNet-121 and Inception-v3 (with its auxiliary head) as torchvision
defines them, written out here (torchvision is not a dependency),
at batch 8 and 224x224: first step, steady step (median), peak resident
memory, each network in a process of its own.

    /tmp/venv-torch/bin/python bench/torch_zoo.py            # torch==2.13.0 in its own venv
    /tmp/venv-torch/bin/python bench/torch_zoo.py resnet50 --batch 8 --steps 3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

RUN = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from torch import nn
name, size, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)


def conv_bn(cin, cout, k, stride=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class Block(nn.Module):
    def __init__(self, cin, width, stride, bottleneck):
        super().__init__()
        cout = width * (4 if bottleneck else 1)
        if bottleneck:
            self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                      conv_bn(width, cout, 1, relu=False))
        else:
            self.body = nn.Sequential(conv_bn(cin, width, 3, stride),
                                      conv_bn(width, width, 3, relu=False))
        self.skip = (conv_bn(cin, cout, 1, stride, relu=False)
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet(counts, bottleneck, classes=1000):
    layers = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(counts):
        width = 64 * 2 ** i
        for j in range(n):
            layers.append(Block(cin, width, 2 if j == 0 and i > 0 else 1, bottleneck))
            cin = width * (4 if bottleneck else 1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def vgg16(classes=1000):
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True),
                         nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(4096, classes))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True),
                               nn.Conv2d(cin, 4 * growth, 1, bias=False),
                               nn.BatchNorm2d(4 * growth), nn.ReLU(True),
                               nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


def densenet121(classes=1000, growth=32):
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
              nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate([6, 12, 24, 16]):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if i < 3:
            layers += [nn.BatchNorm2d(c), nn.ReLU(True), nn.Conv2d(c, c // 2, 1, bias=False),
                       nn.AvgPool2d(2, 2)]
            c //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(True), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(c, classes))


def cbr(cin, cout, k, stride=1, pad=0):          # torchvision's BasicConv2d
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False),
                         nn.BatchNorm2d(cout, eps=0.001), nn.ReLU(True))


class Branches(nn.Module):
    # branches side by side, concatenated on the channels; a branch is a
    # module or (stem, [heads]) whose heads all read the stem's output
    def __init__(self, *branches):
        super().__init__()
        self.b = nn.ModuleList(nn.ModuleList([b[0], nn.ModuleList(b[1])])
                               if isinstance(b, tuple) else b for b in branches)

    def forward(self, x):
        out = []
        for b in self.b:
            if isinstance(b, nn.ModuleList):
                y = b[0](x)
                out += [h(y) for h in b[1]]
            else:
                out.append(b(x))
        return torch.cat(out, 1)


def inception_a(cin, pool):
    return Branches(cbr(cin, 64, 1), nn.Sequential(cbr(cin, 48, 1), cbr(48, 64, 5, pad=2)),
                    nn.Sequential(cbr(cin, 64, 1), cbr(64, 96, 3, pad=1), cbr(96, 96, 3, pad=1)),
                    nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(cin, pool, 1)))


def inception_c(c7):
    return Branches(cbr(768, 192, 1),
                    nn.Sequential(cbr(768, c7, 1), cbr(c7, c7, (1, 7), pad=(0, 3)),
                                  cbr(c7, 192, (7, 1), pad=(3, 0))),
                    nn.Sequential(cbr(768, c7, 1), cbr(c7, c7, (7, 1), pad=(3, 0)),
                                  cbr(c7, c7, (1, 7), pad=(0, 3)), cbr(c7, c7, (7, 1), pad=(3, 0)),
                                  cbr(c7, 192, (1, 7), pad=(0, 3))),
                    nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(768, 192, 1)))


def inception_e(cin):
    return Branches(cbr(cin, 320, 1),
                    (cbr(cin, 384, 1), [cbr(384, 384, (1, 3), pad=(0, 1)),
                                        cbr(384, 384, (3, 1), pad=(1, 0))]),
                    (nn.Sequential(cbr(cin, 448, 1), cbr(448, 384, 3, pad=1)),
                     [cbr(384, 384, (1, 3), pad=(0, 1)), cbr(384, 384, (3, 1), pad=(1, 0))]),
                    nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(cin, 192, 1)))


class InceptionV3(nn.Module):
    # as specs/inception_v3.nn (torchvision's, aux_logits=True): (logits, aux)
    def __init__(self, classes=1000):
        super().__init__()
        self.body = nn.Sequential(
            cbr(3, 32, 3, 2), cbr(32, 32, 3), cbr(32, 64, 3, pad=1), nn.MaxPool2d(3, 2),
            cbr(64, 80, 1), cbr(80, 192, 3), nn.MaxPool2d(3, 2),
            inception_a(192, 32), inception_a(256, 64), inception_a(288, 64),
            Branches(cbr(288, 384, 3, 2),
                     nn.Sequential(cbr(288, 64, 1), cbr(64, 96, 3, pad=1), cbr(96, 96, 3, 2)),
                     nn.MaxPool2d(3, 2)),
            inception_c(128), inception_c(160), inception_c(160), inception_c(192))
        self.aux = nn.Sequential(nn.AvgPool2d(5, 3), cbr(768, 128, 1), cbr(128, 768, 5),
                                 nn.Flatten(), nn.Linear(768, classes))
        self.head = nn.Sequential(
            Branches(nn.Sequential(cbr(768, 192, 1), cbr(192, 320, 3, 2)),
                     nn.Sequential(cbr(768, 192, 1), cbr(192, 192, (1, 7), pad=(0, 3)),
                                   cbr(192, 192, (7, 1), pad=(3, 0)), cbr(192, 192, 3, 2)),
                     nn.MaxPool2d(3, 2)),
            inception_e(1280), inception_e(2048), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(0.5), nn.Linear(2048, classes))

    def forward(self, x):
        y = self.body(x)
        return self.head(y), self.aux(y)


net = {"resnet18": lambda: resnet([2, 2, 2, 2], False),
       "resnet50": lambda: resnet([3, 4, 6, 3], True), "vgg16": vgg16,
       "densenet121": densenet121, "inception_v3": InceptionV3}[name]()
params = sum(p.numel() for p in net.parameters())
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, size, size)
y = torch.randint(0, 1000, (batch,))


def step():
    opt.zero_grad()
    out = net(x)
    if isinstance(out, tuple):      # Inception-v3 as its spec trains it: label smoothing
        ce = nn.functional.cross_entropy    # 0.1, the auxiliary loss weighted 0.4, clip 2.0
        loss = ce(out[0], y, label_smoothing=0.1) + 0.4 * ce(out[1], y, label_smoothing=0.1)
    else:
        loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    if isinstance(out, tuple):
        torch.nn.utils.clip_grad_norm_(net.parameters(), 2.0)
    opt.step()


t1 = time.perf_counter()
step()
t2 = time.perf_counter()
times = []
for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"params": params, "first": t2 - t0, "step": sorted(times)[len(times) // 2],
                  "rss_gb": rss, "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
"""


def run(python: str, name: str, size: int, batch: int, steps: int) -> dict:
    """One network's steps in a process of `python` (a Python with torch)."""
    out = subprocess.run([python, "-c", RUN, name, str(size), str(batch), str(steps)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} (PyTorch): {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["resnet18", "resnet50", "vgg16"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="steady steps timed (median)")
    args = ap.parse_args()
    print(f"{'network':<10} {'params':>11} {'first':>7} {'step':>7} {'peak RSS':>8}")
    for name in args.names:
        r = run(sys.executable, name, args.size, args.batch, args.steps)
        print(f"{name:<10} {r['params']:>11,} {r['first']:>6.1f}s {r['step']:>6.2f}s "
              f"{r['rss_gb']:>6.2f}GB  torch {r['torch']}, {r['threads']} threads", flush=True)


if __name__ == "__main__":
    main()
