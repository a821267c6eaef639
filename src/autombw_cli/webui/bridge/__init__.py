"""The autombw bridge: an in-memory block merge served from inside a WebUI.

- `core`: `BridgeCore`, the thin engine that sequences a merge, restore or save.
- `host`: the `BridgeHost` seam (A1111's host in `a1111_host`, the simulator's in `sim.host`).
- `state`: `LiveState`, what the live model holds and the current merge (immutable, replaced
  whole); `cache`: A's and B's tensors per slot on a device; `live`: slot modules, spot checks,
  writing merged tensors; `pairs`: which checkpoints a request names and whether they fit.
- `errors`: `BridgeError` and subclasses, each with its HTTP status.
- `routes`: the ``/autombw/v1/`` FastAPI routes (request shape checked before the queue lock;
  every `BridgeError` answered in one place).
- `a1111_host`: the host over A1111's ``modules`` (imported only inside a WebUI).
- `names`, `save`: name matching and safe output names, streaming a merged checkpoint to disk.
- `extension`: ``autombw webui install-extension`` (copies the modules above, and what they
  import, into a self-contained extension folder).

Checkpoints are read with `merging.checkpoint_io` and merged by the policy of `merging.plan`
with the kernels of `merging.kernels`, like the offline merge. Everything but `extension` uses
only torch, safetensors, fastapi and the standard library. Importing this package imports
nothing else.
"""
