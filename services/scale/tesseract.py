"""Tesseract kept loaded in the process (its C API through ctypes), pytesseract otherwise.

pytesseract starts the ``tesseract`` program for every call, and the program loads its LSTM
model each time: about 0.2 s per call on this kind of machine, even for a 60×90 crop, which
is most of an image's time budget and rules out reading targeted crops. The C API of the
same Debian ``libtesseract`` keeps one initialised engine per thread, so a call costs only
the recognition itself. Where the shared library is missing (another OS, another version),
:func:`image_to_data` falls back to pytesseract with the same arguments and output.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import threading

import numpy as np

log = logging.getLogger(__name__)

_LIB_NAMES = ("libtesseract.so.5", "libtesseract.so", "libtesseract.5.dylib", "libtesseract.dylib")
_OEM_LSTM_ONLY = 1
_COLUMNS = ("level", "page_num", "block_num", "par_num", "line_num", "word_num",
            "left", "top", "width", "height", "conf", "text")


def _load_library() -> ctypes.CDLL | None:
    names = list(_LIB_NAMES)
    found = ctypes.util.find_library("tesseract")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        lib.TessBaseAPICreate.restype = vp
        lib.TessBaseAPIInit2.argtypes = [vp, cp, cp, i]
        lib.TessBaseAPIInit2.restype = i
        lib.TessBaseAPISetPageSegMode.argtypes = [vp, i]
        lib.TessBaseAPISetVariable.argtypes = [vp, cp, cp]
        lib.TessBaseAPISetVariable.restype = i
        lib.TessBaseAPISetImage.argtypes = [vp, vp, i, i, i, i]
        lib.TessBaseAPISetSourceResolution.argtypes = [vp, i]
        lib.TessBaseAPIRecognize.argtypes = [vp, vp]
        lib.TessBaseAPIRecognize.restype = i
        lib.TessBaseAPIGetTsvText.argtypes = [vp, i]
        lib.TessBaseAPIGetTsvText.restype = vp
        lib.TessDeleteText.argtypes = [vp]
        lib.TessBaseAPIClear.argtypes = [vp]
        lib.TessBaseAPIEnd.argtypes = [vp]
        lib.TessBaseAPIDelete.argtypes = [vp]
        return lib
    return None


_lib: ctypes.CDLL | None = None
_lib_tried = False
_local = threading.local()
_apis: list[int] = []
_lock = threading.Lock()


def _library() -> ctypes.CDLL | None:
    global _lib, _lib_tried
    with _lock:
        if not _lib_tried:
            _lib_tried = True
            _lib = _load_library()
            if _lib is None:
                log.info("libtesseract not loadable: OCR runs the tesseract program through pytesseract")
    return _lib


def _api() -> int | None:
    """This thread's initialised engine (None when the library or the English model is missing)."""
    if getattr(_local, "pid", None) != os.getpid():  # a forked worker builds its own engine
        _local.__dict__.clear()
        _local.pid = os.getpid()
    api = getattr(_local, "api", None)
    if api is not None or getattr(_local, "failed", False):
        return api
    lib = _library()
    if lib is None:
        _local.failed = True
        return None
    handle = lib.TessBaseAPICreate()
    if lib.TessBaseAPIInit2(handle, None, b"eng", _OEM_LSTM_ONLY) != 0:
        lib.TessBaseAPIDelete(handle)
        log.warning("libtesseract could not load its English model: falling back to pytesseract")
        _local.failed = True
        return None
    lib.TessBaseAPISetVariable(handle, b"debug_file", b"/dev/null")  # no 'Detected N diacritics' chatter
    _local.api = handle
    with _lock:
        _apis.append(handle)
    return handle


@atexit.register
def _shutdown() -> None:
    if _lib is None:
        return
    with _lock:
        for handle in _apis:
            _lib.TessBaseAPIEnd(handle)
            _lib.TessBaseAPIDelete(handle)
        _apis.clear()


def backend() -> str:
    """'libtesseract' (in-process) or 'pytesseract' (one program run per call)."""
    return "libtesseract" if _api() is not None else "pytesseract"


def image_to_data(img: np.ndarray, psm: int = 11, whitelist: str | None = None) -> dict[str, list]:
    """Words of an 8-bit grey image, as ``pytesseract.image_to_data(..., output_type=DICT)``."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    handle = _api()
    if handle is None:
        return _pytesseract_data(img, psm, whitelist)
    lib = _lib
    assert lib is not None
    lib.TessBaseAPISetPageSegMode(handle, int(psm))
    lib.TessBaseAPISetVariable(handle, b"tessedit_char_whitelist", (whitelist or "").encode("utf-8"))
    lib.TessBaseAPISetImage(handle, img.ctypes.data, img.shape[1], img.shape[0], 1, img.strides[0])
    lib.TessBaseAPISetSourceResolution(handle, 70)
    out: dict[str, list] = {c: [] for c in _COLUMNS}
    if lib.TessBaseAPIRecognize(handle, None) != 0:
        lib.TessBaseAPIClear(handle)
        return out
    ptr = lib.TessBaseAPIGetTsvText(handle, 0)
    try:
        tsv = ctypes.string_at(ptr).decode("utf-8", errors="replace") if ptr else ""
    finally:
        if ptr:
            lib.TessDeleteText(ptr)
        lib.TessBaseAPIClear(handle)
    for row in tsv.splitlines():
        cells = row.split("\t")
        if len(cells) < 12:
            continue
        for name, cell in zip(_COLUMNS[:11], cells[:11]):
            out[name].append(float(cell) if name == "conf" else int(cell))
        out["text"].append("\t".join(cells[11:]))
    return out


def _pytesseract_data(img: np.ndarray, psm: int, whitelist: str | None) -> dict[str, list]:
    import pytesseract

    config = f"--oem {_OEM_LSTM_ONLY} --psm {psm}"
    if whitelist:
        config += f" -c tessedit_char_whitelist={whitelist}"
    data = pytesseract.image_to_data(img, config=config, output_type=pytesseract.Output.DICT)
    data["conf"] = [float(c) for c in data["conf"]]
    return data
