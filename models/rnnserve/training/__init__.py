"""Training, ONNX export and manifests for rnnserve's recurrent models (torch lives only here)."""
