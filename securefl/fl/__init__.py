"""Federated learning pieces: models, local training, server optimizers and metrics."""
