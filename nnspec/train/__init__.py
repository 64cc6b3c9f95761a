"""Training, evaluation, checkpoints and `.nnc` model files.

    from nnspec.train import fit, evaluate, save, load
    result = fit(net, "digits", epochs=10, out_dir="runs/mlp")
    save(net, "mlp.nnc"); net2 = load("mlp.nnc")
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import fit
from .metrics import evaluate
from .nnc import load, save
from .schedule import lr_at

__all__ = ["fit", "evaluate", "TrainConfig", "lr_at", "save", "load",
           "save_checkpoint", "load_checkpoint"]
