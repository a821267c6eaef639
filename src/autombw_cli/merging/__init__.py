"""Merge kernels and checkpoint streaming (torch, safetensors and the stdlib only).

This package is shared by the offline merge, the WebUI bridge extension and the simulator, so it
must not import anything a stock AUTOMATIC1111 install lacks.
"""
