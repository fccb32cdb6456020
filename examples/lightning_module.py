"""sane-run's curvature from a PyTorch Lightning Trainer: a LightningModule trained by mini-batch SGD on MNIST-1D,
the Hessian of its training loss measured every epoch by ``SaneCallback`` (the ``lightning`` extra).

    python examples/lightning_module.py                   # outputs/lightning/lr0.05 (about a minute on 2 cores)
    python examples/lightning_module.py --lr 0.2          # another learning rate beside it
    sane-report outputs/lightning                         # the two compared
"""

from __future__ import annotations

import argparse

import lightning
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sane_cli.data import load_data
from sane_cli.lightning import SaneCallback


class Classifier(lightning.LightningModule):
    """An MLP whose training loss is the cross-entropy of its logits (what SaneCallback's loss measures)."""

    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=1000, help="MNIST-1D training examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/lightning")
    args = parser.parse_args()

    spec = {"name": "mnist1d", "n_train": args.n_train, "n_test": 500, "data_seed": 42, "per_class": None,
            "cache_dir": None}  # fmt: skip
    data = load_data(OmegaConf.create(spec))
    lightning.seed_everything(args.seed)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=100, shuffle=True)
    config = {"seed": args.seed, "dataset": {"name": "mnist1d"}, "optim": {"batch_size": 100}}
    callback = SaneCallback(f"{args.out}/lr{args.lr:g}", every_n_epochs=1, test_data=(data.x_test, data.y_test),
                            config=config)  # fmt: skip
    trainer = lightning.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, callbacks=[callback],
                                logger=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(Classifier(args.lr), loader)
    print(f"wrote {callback.run_dir}")


if __name__ == "__main__":
    main()
