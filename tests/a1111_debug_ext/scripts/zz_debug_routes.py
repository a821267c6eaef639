"""Test-only A1111 extension: GET /debug/live_hashes -> sha1 of every live state-dict tensor
(as float32 bytes for float tensors) of shared.sd_model, keys as in a checkpoint
(A1111's '.wrapped.' removed). Used to compare the live merge with an offline merge."""

import hashlib

from modules import script_callbacks


def _on_app_started(_demo, app):
    from fastapi import Query

    def live_hashes(prefix: str = Query("")):
        import torch
        from modules import sd_models

        model = sd_models.model_data.sd_model
        out = {}
        with torch.no_grad():
            for k, t in model.state_dict().items():
                ck = k.replace(".wrapped.", ".")
                if not ck.startswith(prefix):
                    continue
                t = t.detach().cpu()
                if t.is_floating_point():
                    t = t.float()
                out[ck] = [str(t.dtype), hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()]
        info = getattr(model, "sd_checkpoint_info", None)
        return {"checkpoint": getattr(info, "title", None), "model_id": id(model), "hashes": out}

    app.add_api_route("/debug/live_hashes", live_hashes, methods=["GET"])
    print("zz-autombw-debug: /debug/live_hashes ready")


script_callbacks.on_app_started(_on_app_started)
