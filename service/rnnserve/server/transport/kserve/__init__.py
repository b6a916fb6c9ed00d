"""The Open Inference Protocol (KServe v2) front door, with Triton's sequence parameters."""
