"""The v1 protocol: multipart, raw or JSON images with budget knobs."""
