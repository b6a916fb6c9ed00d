"""The rnnserve.v1 gRPC front door: servicer, proto <-> domain codecs, error -> status mapping."""
