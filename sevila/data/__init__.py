"""Dataset readers, video decoding and the synthetic world."""
