"""The openvino target (being written)."""
