"""The inference engine: one ONNX Runtime session per model file, shared by workers, the CLI and clustering.

* Execution providers: TensorRT (when installed and enabled), CUDA where a GPU exists, CPU
  otherwise; graph optimisation on; intra-op threads from the process's cores.
* Preprocessing comes from the model file's own ``semtag`` metadata (:mod:`services.images.preprocess`).
* Fixed batch sizes are warmed up once, so shape-specific work (cuDNN algorithm search, TensorRT
  engines) happens at start, not on the first request.
* :func:`engine_for` caches one engine per model file sha256: activating another model makes the
  next batch load the new file, while the batch in flight finishes with the one it started with.
* Decoding runs in a thread pool and overlaps the model run (:meth:`Engine.classify_paths`).
* Each engine builds and runs its session on a thread of its own, at the process's priority, so the threads
  that do the work around the model can be scheduled below it (:func:`yield_to_model`); a model being loaded
  does not hold up the runs of the one it replaces.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.classify.registry import META_KEY
from services.errors import BadInput, BadParams
from services.images import prepared
from services.images.imaging import ImageRejected, decode_gray, reduce, release_memory
from services.images.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, prepare_gray

WARMUP_BATCHES = (1, 8, 32)

# Model threads: each engine builds and runs its ONNX Runtime session on a thread of its own, started by the
# spawner, a thread kept at the process's own priority for that purpose alone. So the session's intra-op threads
# (created with it, inheriting its creator's scheduling priority) and the thread that calls ``run`` (which takes
# part in the run's work) keep the process's priority, whichever thread asked for the engine.
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _started_thread(name: str) -> tuple[ThreadPoolExecutor, int]:
    """A one-thread executor whose thread is started now, from the calling thread; with that thread's ident."""
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    return ex, ex.submit(threading.get_ident).result()


def _spawner_thread() -> ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _started_thread("semtag-spawner")[0]  # from this thread, at its priority
        return _spawner


def _spawn(fn: Callable[[], Any]) -> Any:
    return _spawner_thread().submit(fn).result()


def _after_fork_in_child() -> None:
    """A forked child (a prefork pool's) has none of its parent's threads: no spawner, and no engine whose
    session's threads are gone."""
    global _spawner, _spawner_lock, _cache_lock
    _spawner, _spawner_lock, _cache_lock = None, threading.Lock(), threading.Lock()
    _cache.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# the priority (nice value) of the process's threads as started: the model threads'
_BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


def yield_to_model(nice: int) -> None:
    """Schedule the calling thread ``nice`` steps below the process's own priority (at most 19; Linux, where
    the nice value is per thread; a no-op for 0, or where it is not allowed). Threads it starts afterwards
    inherit the lower priority.

    The inference worker's threads around the model (decoding the next batch, storing the last, fetching
    messages) then get a small share of a core while the model's threads want it (nice 10: about a tenth),
    instead of an equal one: on a CPU host whose cores the model fills, their wake-ups rarely preempt an ONNX
    Runtime thread mid-operator, where the other would wait at the operator's barrier (bench/RESULTS.md).
    A thread's priority can only be lowered, and threads inherit their creator's: the spawner that starts
    the model threads is started first, at the process's priority."""
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    _spawner_thread()  # started before this thread lowers its priority (a no-op once it exists)
    tid, target = threading.get_native_id(), min(19, _BASE_NICE + nice)
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError:  # not allowed here (a sandbox's seccomp): the thread keeps its priority
        pass


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_providers(prefer: Iterable[str] | None = None) -> list[str]:
    """The best available providers in order; TensorRT only when SEMTAG_TENSORRT=1 (engine builds are slow)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    order = list(prefer) if prefer else (
        (["TensorrtExecutionProvider"] if os.environ.get("SEMTAG_TENSORRT") == "1" else [])
        + ["CUDAExecutionProvider", "CPUExecutionProvider"])
    chosen = [p for p in order if p in available]
    return chosen or ["CPUExecutionProvider"]


@dataclass
class Classification:
    category: str
    category_index: int
    probabilities: list[float]
    confidence: float
    margin: float
    needs_review: bool
    ood_score: float

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "category_index": self.category_index,
                "probabilities": self.probabilities, "confidence": self.confidence, "margin": self.margin,
                "needs_review": self.needs_review, "ood_score": self.ood_score}


def ood_score(energy: float, colour: float, energy_stats: dict | None) -> float:
    """0–1: how unlike an SEM micrograph of the training distribution the input is.

    Two signals, the larger wins: colour (SEM images are monochrome; colourfulness above ~15 is
    suspect, above ~40 near certain) and the logit energy −logsumexp(z) compared with the
    validation set's (stored at export): far above the validation energies means the network
    recognises nothing it was trained on.
    """
    c = float(np.clip((colour - 15.0) / 25.0, 0.0, 1.0))
    e = 0.0
    if energy_stats and energy_stats.get("std"):
        z = (energy - energy_stats["mean"]) / energy_stats["std"]
        e = float(1.0 / (1.0 + math.exp(-(z - 3.0))))  # 0.5 at three standard deviations above validation
    return max(c, e)


class Engine:
    """An ONNX Runtime session for one exported semtag model."""

    def __init__(self, model_path: Path | str, providers: list[str] | None = None, threads: int | None = None,
                 warmup: Iterable[int] = (), review_threshold: float = 0.6,
                 max_pixels: int = DEFAULT_MAX_PIXELS, memory_arena: bool = False, spin: bool = False) -> None:
        # the engine's model thread; it ends when the engine is dropped (the executor's thread holds it weakly)
        self._thread, self._thread_ident = _spawn(lambda: _started_thread("semtag-model"))
        self.on_model_thread(self._load, model_path, providers, threads, list(warmup), review_threshold,
                             max_pixels, memory_arena, spin)

    def on_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this engine's model thread (directly when called from it); one call at a time."""
        if threading.get_ident() == self._thread_ident:
            return fn(*args)
        return self._thread.submit(fn, *args).result()

    def _load(self, model_path: Path | str, providers: list[str] | None, threads: int | None, warmup: list[int],
              review_threshold: float, max_pixels: int, memory_arena: bool, spin: bool) -> None:
        import onnxruntime as ort

        self.path = Path(model_path)
        if not self.path.is_file():
            raise BadInput(f"model file {self.path} does not exist", "not_found")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or cpu_count()
        so.inter_op_num_threads = 1
        # Without the arena (and its planned buffers) a batch's activations are freed after the run instead
        # of staying allocated at the largest batch size seen: the worker's memory follows its current work.
        so.enable_cpu_mem_arena = memory_arena
        so.enable_mem_pattern = memory_arena
        # Idle intra-op threads busy-wait for the next operator by default: on cores the process shares (the ocr
        # workers, the API) that burnt a third more CPU per image than the work itself (bench/RESULTS.md, backfill)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=choose_providers(providers))
        except Exception as exc:
            raise BadInput(f"{self.path} cannot be loaded by ONNX Runtime: {exc}", "bad_model") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise BadInput(f"{self.path} has no '{META_KEY}' metadata; export models with `semtag export`",
                           "bad_model")
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        self.pp = Preprocessing.from_dict(self.meta["preprocessing"])
        self.classes: list[str] = list(self.meta["classes"])
        self.outputs: dict[str, str] = dict(self.meta["outputs"])
        self.input_name: str = self.meta.get("input", "input")
        self.review_threshold = review_threshold
        self.max_pixels = max_pixels
        self.providers = self.session.get_providers()
        for b in warmup:
            self.run(np.zeros((b, self.pp.input_size, self.pp.input_size, self.pp.channels), np.float32))
        release_memory()  # loading parses the model into buffers it frees again (about the model's size)

    @property
    def version_hint(self) -> str:
        return str(self.meta.get("run_name", self.path.stem))

    def run(self, x: np.ndarray, outputs: Iterable[str] = ("logits", "probabilities")) -> dict[str, np.ndarray]:
        names = [self.outputs[o] for o in outputs]
        feed = {self.input_name: np.ascontiguousarray(x, np.float32)}
        # One run at a time, whoever calls, on the model thread: a worker running two batches at once (the threads
        # pool) decodes and stores one while the other has the cores for the model, instead of splitting the cores
        # between two runs
        res = self.on_model_thread(self.session.run, names, feed)
        return dict(zip(outputs, res))

    # ---- decoding (thread-safe; OpenCV releases the GIL) ----
    def decode(self, path: Path | str) -> tuple[np.ndarray, float]:
        """(model input, colourfulness) for one file, decoded once at reduced size in bounded memory;
        raises ``ImageRejected``/``OSError``."""
        if prepared.is_prepared(path):  # decoded at ingest (a grey JPEG): only the last reduction is left
            try:
                gray = prepared.load(path)
            except (ValueError, OSError) as exc:
                raise OSError(f"prepared input unreadable: {exc}") from exc
            factor = min(gray.shape) // max(1, self.pp.input_size)
            return prepare_gray(reduce(gray, factor) if factor > 1 else gray, self.pp), 0.0
        decoded = decode_gray(path, self.max_pixels, min_side=self.pp.input_size)
        return prepare_gray(decoded.gray, self.pp), decoded.colourfulness

    def results(self, logits: np.ndarray, probs: np.ndarray, colours: list[float]) -> list[Classification]:
        out = []
        energy_stats = self.meta.get("energy")
        for z, p, colour in zip(logits, probs, colours):
            order = np.argsort(p)[::-1]
            top, second = int(order[0]), int(order[1])
            m = float(z.max())
            energy = -(m + math.log(float(np.exp(z - m).sum())))
            ood = ood_score(energy, colour, energy_stats)
            conf = float(p[top])
            out.append(Classification(self.classes[top], top, [float(v) for v in p], conf, float(p[top] - p[second]),
                                      conf < self.review_threshold or ood >= 0.5, round(ood, 4)))
        return out

    def classify_arrays(self, x: np.ndarray, colours: list[float] | None = None) -> list[Classification]:
        r = self.run(x)
        return self.results(r["logits"], r["probabilities"], colours or [0.0] * len(x))

    def classify_paths(self, paths: list, batch_size: int = 32, threads: int | None = None,
                       ) -> Iterator[tuple[Any, Classification | None, str | None]]:
        """Yield (path, result, error) in order; decoding of the next batch overlaps the current run."""
        if batch_size < 1:
            raise BadParams("batch size must be at least 1")
        pool = ThreadPoolExecutor(max_workers=threads or max(1, cpu_count()), thread_name_prefix="semtag-decode")

        def safe_decode(p):  # noqa: ANN001, ANN202
            try:
                return self.decode(p), None
            except ImageRejected as exc:
                return None, exc.message
            except OSError as exc:
                return None, str(exc)

        try:
            chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
            pending = [pool.submit(safe_decode, p) for p in chunks[0]] if chunks else []
            for n, chunk in enumerate(chunks):
                decoded = [f.result() for f in pending]
                pending = [pool.submit(safe_decode, p) for p in chunks[n + 1]] if n + 1 < len(chunks) else []
                ok = [(p, d) for p, (d, err) in zip(chunk, decoded) if d is not None]
                results = {}
                if ok:
                    x = np.stack([d[0] for _, d in ok])
                    for (p, _), res in zip(ok, self.classify_arrays(x, [d[1] for _, d in ok])):
                        results[id(p)] = res
                for p, (_d, err) in zip(chunk, decoded):
                    yield p, results.get(id(p)), err
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


_cache: dict[str, Engine] = {}
_cache_lock = threading.Lock()


def engine_for(path: Path | str, sha256: str, loader: Callable[[], Engine] | None = None) -> Engine:
    """The engine for one model file (by sha256), built once per process; older engines are dropped."""
    with _cache_lock:
        eng = _cache.get(sha256)
        if eng is None:
            eng = loader() if loader else Engine(path)
            _cache.clear()  # one model in memory: a newly activated model replaces the old one
            _cache[sha256] = eng
        return eng
