"""A Flower app with the bank's own torch model, switched to securefl's secure aggregation."""
