"""Writes a tiny TorchScript model for TorchServe: a two-layer perceptron (4 inputs, 3 scores).

Usage: python make_torchserve_model.py OUT.pt   (run with the venv's interpreter, which has torch)
"""
import sys

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(4, 16),
    torch.nn.ReLU(),
    torch.nn.Linear(16, 3),
    torch.nn.Softmax(dim=-1),
)
model.eval()
torch.jit.save(torch.jit.script(model), sys.argv[1])
