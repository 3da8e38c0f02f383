"""A stand-in for a GPU's model run, for ``bench/inference_pipeline.py --gpu-like-ms N``: on the PYTHONPATH of the
bench and of the services it starts, every ONNX Runtime ``InferenceSession.run`` sleeps N ms per image and
returns zeros of the model's output shapes. Like a GPU's run it takes time but no CPU core, so the pipeline's
ratio to the raw figure shows how much of the work around the model (messages, database, inputs) is hidden
behind it. Speed only: the predictions mean nothing. Never on a service's path outside this bench."""

import os
import time

_MS = float(os.environ.get("BENCH_GPU_LIKE_MS", "0") or 0)


def _patch() -> None:
    import numpy as np
    import onnxruntime as ort

    def run(self, names, feed, *a, **kw):
        n = len(next(iter(feed.values())))
        time.sleep(_MS * n / 1000.0)
        outs = {o.name: o for o in self.get_outputs()}
        return [np.zeros((n, *[d if isinstance(d, int) else 1 for d in outs[k].shape[1:]]), np.float32)
                for k in (names or list(outs))]

    ort.InferenceSession.run = run


if _MS > 0:
    _patch()
