"""Task adapters: how each kind of model gets its batches, loss and held-out metrics."""
