"""Your own torch model, trained by three banks' DataFrames with SecAgg and DP (securefl.train)."""
import sys

import numpy as np
import pandas as pd
import torch

import securefl
from securefl.data import open_embedded


class ResidualScorer(torch.nn.Module):  # your own model (not securefl's): DP-SGD runs via Opacus
    def __init__(self, d: int, width: int = 32) -> None:
        super().__init__()
        self.inp, self.norm = torch.nn.Linear(d, width), torch.nn.LayerNorm(width)
        self.block, self.out = torch.nn.Linear(width, width), torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.inp(x)))
        return self.out(h + torch.relu(self.block(h)))


def main(out: str = "runs/custom-model", rounds: int = 5) -> securefl.RunResult:
    df = pd.read_csv(open_embedded(), compression="gzip").drop(columns="ID")
    feats = [c for c in df.columns if c != "default"]
    df[feats] = np.sign(df[feats]) * np.log1p(df[feats].abs())  # a fixed, agreed transform
    test = df.sample(frac=0.2, random_state=0)
    train = df.drop(test.index)
    group = train["EDUCATION"].map({np.log1p(1): "graduate", np.log1p(2): "university"})
    frames = dict(tuple(train.groupby(group.fillna("other"))))  # one DataFrame per bank
    banks = [securefl.Bank.from_frame(name, frame, label="default") for name, frame in frames.items()]
    torch.manual_seed(0)
    config = securefl.RunConfig(aggregation="secagg", dp=True, rounds=rounds, out=out)
    return securefl.train(ResidualScorer(len(feats)), banks, config,
                          test=(test[feats].to_numpy(), test["default"].to_numpy()))


if __name__ == "__main__":
    result = main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
    print(result.final_metrics, result.privacy["federation"])
