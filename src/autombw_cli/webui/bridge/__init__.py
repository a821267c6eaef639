"""The autombw bridge: an in-memory block merge served from inside a WebUI.

- `core`: `BridgeCore`, the merge engine over a small `BridgeHost` seam (no A1111 imports).
- `routes`: the ``/autombw/v1/`` FastAPI routes (plain ``def``, hand-validated dict bodies).
- `a1111_host`: the host over A1111's ``modules`` (imported only inside a WebUI).
- `files`, `names`, `save`: lazy checkpoint reading, name matching and safe output names,
  streaming a merged checkpoint to disk.
- `extension`: ``autombw webui install-extension`` (copies the modules above, and what they
  import, into a self-contained extension folder).

Everything but `extension` uses only torch, safetensors, fastapi and the standard library.
Importing this package imports nothing else.
"""
