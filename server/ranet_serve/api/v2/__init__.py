"""KServe v2 / Open Inference Protocol over REST (JSON tensors and the binary extension)."""
