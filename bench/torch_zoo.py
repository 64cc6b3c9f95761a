"""PyTorch's side of bench/zoo_steps.py: a training step (forward, cross
entropy, backward, SGD with momentum) of ResNet-18, ResNet-50 and VGG-16 as
torchvision defines them, written out here (torchvision is not a dependency),
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


net = {"resnet18": lambda: resnet([2, 2, 2, 2], False),
       "resnet50": lambda: resnet([3, 4, 6, 3], True), "vgg16": vgg16,
       "densenet121": densenet121}[name]()
params = sum(p.numel() for p in net.parameters())
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, size, size)
y = torch.randint(0, 1000, (batch,))


def step():
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
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
