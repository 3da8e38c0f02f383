"""Pixel size and acquisition fields from instrument metadata.

TIFF tags (read with tifffile): Zeiss ``CZ_SEM`` (34118), FEI/Thermo (34680/34682),
TESCAN (50431). Text sidecars (``.txt`` beside the image): Hitachi ``[SemImageFile]`` and
JEOL ``$CM_…``/``$SM_…``. Each reader returns a :class:`MetaReading` or ``None``; corrupt
or absurd values give a reading with ``pixel_size_nm`` None and the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import tifffile

from services.scale.units import normalise_unit, to_nm, valid_length

# a pixel is between 1 pm and 1 mm: anything else is a broken tag
MIN_PX_NM, MAX_PX_NM = 1e-3, 1e6
CROSS_CHECK_TOLERANCE = 0.02


@dataclass
class MetaReading:
    vendor: str
    pixel_size_nm: float | None = None
    pixel_size_from: str | None = None
    field_width_nm: float | None = None
    cross_check: float | None = None  # relative difference between pixel size and field width / width
    scale_value: float | None = None  # a scale-bar length the instrument recorded (sidecars)
    scale_unit: str | None = None
    bar_px: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def _px_ok(nm: float | None) -> bool:
    return nm is not None and valid_length(nm) and MIN_PX_NM <= nm <= MAX_PX_NM


def _finish(r: MetaReading, image_width: int | None) -> MetaReading:
    """Cross-check the pixel size against field width ÷ image width; reject absurd values."""
    fw_px = None
    if r.field_width_nm is not None and image_width:
        fw_px = r.field_width_nm / image_width
    if r.pixel_size_nm is not None and not _px_ok(r.pixel_size_nm):
        r.reason = f"metadata pixel size {r.pixel_size_nm!r} nm is not plausible"
        r.pixel_size_nm = None
    if r.pixel_size_nm is None and _px_ok(fw_px):
        r.pixel_size_nm, r.pixel_size_from = fw_px, "field width / image width"
    elif r.pixel_size_nm is not None and fw_px is not None and _px_ok(fw_px):
        r.cross_check = abs(r.pixel_size_nm - fw_px) / fw_px
        if r.cross_check > CROSS_CHECK_TOLERANCE:
            # the recorded pixel size refers to another resolution than the stored one
            r.reason = (f"pixel size {r.pixel_size_nm:.4g} nm disagrees with field width / image width "
                        f"{fw_px:.4g} nm by {r.cross_check:.0%}; using the latter")
            r.pixel_size_nm, r.pixel_size_from = fw_px, "field width / image width"
    if r.pixel_size_nm is None and r.reason is None:
        r.reason = "metadata has no usable pixel size"
    return r


# ---- Zeiss -------------------------------------------------------------------------------

def _zeiss_len(entry: Any) -> float | None:
    """('Image Pixel Size', 5.86, 'nm') -> 5.86 (nm)."""
    try:
        _, value, unit = entry
        if not valid_length(value):
            return None
        return to_nm(float(value), unit)
    except (TypeError, ValueError):
        return None


def read_zeiss(tag: dict, width: int) -> MetaReading:
    r = MetaReading("Zeiss")
    img_px = _zeiss_len(tag.get("ap_image_pixel_size"))
    if img_px is not None:
        r.pixel_size_nm, r.pixel_size_from = img_px, "AP_IMAGE_PIXEL_SIZE"
    r.field_width_nm = _zeiss_len(tag.get("ap_width"))
    if img_px is None and r.field_width_nm is None:
        mon = _zeiss_len(tag.get("ap_pixel_size"))
        if mon is not None:  # monitor pixel size refers to a 1024-pixel-wide store resolution
            r.pixel_size_nm, r.pixel_size_from = mon * 1024 / width, "AP_PIXEL_SIZE × 1024 / width"
    f = r.fields
    if "ap_mag" in tag:
        f["mag"] = str(tag["ap_mag"][1])
    for key in ("ap_actualkv", "ap_manualkv"):
        if key in tag and "hv_kv" not in f:
            try:
                f["hv_kv"] = to_kv(tag[key][1], tag[key][2])
            except (TypeError, ValueError, IndexError):
                pass
    if "ap_wd" in tag:
        wd = _zeiss_len(tag["ap_wd"])
        if wd:
            f["wd_mm"] = round(wd / 1e6, 4)
    for key in ("dp_detector_channel", "dp_detector_type"):
        if key in tag and "detector" not in f:
            f["detector"] = str(tag[key][1])
    if "ap_date" in tag:
        f["date"] = str(tag["ap_date"][1])
    if "sv_serial_number" in tag:
        f["instrument"] = str(tag["sv_serial_number"][1])
    _zeiss_acquisition(tag, f)
    f["vendor"] = "Zeiss"
    return _finish(r, width)


# Units of Zeiss values converted to the ones the fields carry.
_PA = {"pa": 1.0, "mbar": 100.0, "hpa": 100.0, "torr": 133.322}
_NA = {"pa": 1e-3, "na": 1.0, "µa": 1e3, "ua": 1e3, "ma": 1e6, "a": 1e9}
_NS = {"ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def _zeiss_value(tag: dict, key: str, units: dict[str, float] | None = None) -> float | None:
    """('Stage at T', 0.0, '°') -> 0.0; with ``units``, converted by the factor of the recorded unit."""
    try:
        entry = tag[key]
        v = float(entry[1])
        if not math.isfinite(v):
            return None
        if units is None:
            return v
        return v * units[str(entry[2]).strip().lower()]
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _set(f: dict[str, Any], name: str, value: Any, digits: int = 6) -> None:
    if value is None or value == "":
        return
    f[name] = round(value, digits) if isinstance(value, float) else value


def _zeiss_acquisition(tag: dict, f: dict[str, Any]) -> None:
    """Chamber pressure, stage position and tilt, probe current, dwell time, operator, software, time."""
    _set(f, "chamber_pressure_pa", _zeiss_value(tag, "ap_system_vac", _PA), 12)
    _set(f, "tilt_deg", _zeiss_value(tag, "ap_stage_at_t"))
    for axis in "xyz":
        _set(f, f"stage_{axis}_mm", _zeiss_value(tag, f"ap_stage_at_{axis}", {"mm": 1.0, "µm": 1e-3, "um": 1e-3}))
    _set(f, "beam_current_na", _zeiss_value(tag, "ap_iprobe", _NA), 9)
    _set(f, "dwell_time_ns", _zeiss_value(tag, "dp_dwell_time", _NS))
    for ours, theirs in (("operator", "sv_user_name"), ("software", "sv_version"), ("time", "ap_time"),
                         ("model", "dp_sem")):
        try:
            _set(f, ours, str(tag[theirs][1]).strip())
        except (KeyError, IndexError, TypeError):
            pass


def _copy_text(fields: dict[str, Any], kv: dict[str, str], names: dict[str, str]) -> None:
    """Copy non-empty text entries: ``names`` maps our field name to the vendor's key."""
    for ours, theirs in names.items():
        if kv.get(theirs):
            fields[ours] = kv[theirs]


def to_kv(value: Any, unit: str = "kV") -> float:
    v = float(value)
    u = (unit or "kV").strip().lower()
    return v / 1000.0 if u == "v" else v


# ---- FEI / Thermo ------------------------------------------------------------------------

def _num(d: dict, key: str) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_fei(meta: dict, width: int) -> MetaReading:
    r = MetaReading("FEI/Thermo")
    for section in ("Scan", "EScan", "IScan"):
        sec = meta.get(section)
        if isinstance(sec, dict):
            pw = _num(sec, "PixelWidth")
            if pw is not None:
                r.pixel_size_nm, r.pixel_size_from = pw * 1e9, f"[{section}] PixelWidth"
                hfw = _num(sec, "HorFieldsize")
                if hfw:
                    r.field_width_nm = hfw * 1e9
                break
    image = meta.get("Image") or {}
    res_x = _num(image, "ResolutionX") if isinstance(image, dict) else None
    f = r.fields
    beam = meta.get("Beam") or {}
    hv = _num(beam, "HV") if isinstance(beam, dict) else None
    if hv:
        f["hv_kv"] = hv / 1000.0
    stage = meta.get("Stage") or {}
    wd = _num(stage, "WorkingDistance") if isinstance(stage, dict) else None
    if wd:
        f["wd_mm"] = round(wd * 1000, 4)
    det = meta.get("Detectors") or {}
    if isinstance(det, dict) and det.get("Name"):
        f["detector"] = f"{det.get('Name')} {det.get('Mode', '')}".strip()
    user = meta.get("User") or {}
    if isinstance(user, dict) and user.get("Date"):
        f["date"] = str(user["Date"])
    system = meta.get("System") or {}
    if isinstance(system, dict) and system.get("SystemType"):
        f["instrument"] = str(system["SystemType"])
    _fei_acquisition(meta, f)
    f["vendor"] = "FEI/Thermo"
    # field width refers to the scan resolution (ResolutionX), which excludes the data bar
    return _finish(r, int(res_x) if res_x else width)


def _section(meta: dict, name: str) -> dict:
    sec = meta.get(name)
    return sec if isinstance(sec, dict) else {}


def _times(v: float | None, factor: float) -> float | None:
    return None if v is None else v * factor


def _fei_acquisition(meta: dict, f: dict[str, Any]) -> None:
    """[Vacuum] ChPressure (Pa), [Stage] StageT (radians) and StageX/Y/Z (m), [EBeam] BeamCurrent (A),
    [EScan] Dwell (s), [System] Software, [User] User and Time."""
    stage, ebeam, escan = _section(meta, "Stage"), _section(meta, "EBeam"), _section(meta, "EScan")
    _set(f, "chamber_pressure_pa", _num(_section(meta, "Vacuum"), "ChPressure"), 12)
    tilt = _num(stage, "StageT")
    _set(f, "tilt_deg", None if tilt is None else math.degrees(tilt))
    for axis in "XYZ":
        _set(f, f"stage_{axis.lower()}_mm", _times(_num(stage, f"Stage{axis}"), 1e3))
    _set(f, "beam_current_na", _times(_num(ebeam, "BeamCurrent"), 1e9), 9)
    _set(f, "dwell_time_ns", _times(_num(escan, "Dwell") or _num(_section(meta, "Scan"), "Dwelltime"), 1e9))
    user, system = _section(meta, "User"), _section(meta, "System")
    for ours, sec, key in (("operator", user, "User"), ("time", user, "Time"), ("software", system, "Software"),
                           ("model", system, "SystemType")):
        if sec.get(key) not in (None, ""):
            f[ours] = str(sec[key]).strip()


# ---- TESCAN ------------------------------------------------------------------------------

def parse_ini(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            k = k.strip().lstrip("\ufeff")
            if k and k not in out:
                out[k] = v.strip()
    return out


def read_tescan(raw: bytes | str, width: int) -> MetaReading:
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    kv = parse_ini(text)
    r = MetaReading("TESCAN")
    px = _num(kv, "PixelSizeX")
    if px is not None:
        r.pixel_size_nm, r.pixel_size_from = px * 1e9, "PixelSizeX"
    elif "PixelSizeX" in kv:
        r.reason = f"PixelSizeX {kv['PixelSizeX']!r} is not a number"
    f = r.fields
    hv = _num(kv, "HV")
    if hv:
        f["hv_kv"] = hv / 1000.0
    wd = _num(kv, "WD")
    if wd:
        f["wd_mm"] = round(wd * 1000, 4)
    mag = _num(kv, "Magnification")
    if mag:
        f["mag"] = f"{mag:.4g} x"
    _copy_text(f, kv, {"detector": "Detector", "date": "Date", "instrument": "Device", "time": "Time",
                       "software": "SoftwareVersion", "model": "DeviceModel"})
    _set(f, "operator", kv.get("FullUserName") or kv.get("UserName"))
    _set(f, "chamber_pressure_pa", _num(kv, "ChamberPressure"), 12)
    _set(f, "tilt_deg", _num(kv, "StageTilt"))
    for axis in "XYZ":
        _set(f, f"stage_{axis.lower()}_mm", _times(_num(kv, f"Stage{axis}"), 1e3))
    _set(f, "beam_current_na", _times(_num(kv, "BeamCurrent"), 1e9), 9)
    _set(f, "dwell_time_ns", _times(_num(kv, "DwellTime"), 1e9))
    f["vendor"] = "TESCAN"
    return _finish(r, width)


# ---- sidecars (Hitachi, JEOL) ------------------------------------------------------------

def read_text_file(path: Path) -> str:
    raw = Path(path).read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", "replace")
    if len(raw) > 2 and raw[1:2] == b"\x00":
        return raw.decode("utf-16-le", "replace")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _size_mismatch(declared: str | None, width: int, height: int) -> str | None:
    if not declared:
        return None
    m = re.match(r"\s*(\d+)\s*[x*X ]\s*(\d+)", declared)
    if not m:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    if w != width or h != height:
        return f"sidecar describes a {w}x{h} image, this image is {width}x{height}: it does not belong to it"
    return None


def read_hitachi(kv: dict[str, str], width: int, height: int) -> MetaReading:
    r = MetaReading("Hitachi")
    mismatch = _size_mismatch(kv.get("DataSize"), width, height)
    if mismatch:
        r.reason = mismatch
        return r
    px = _num(kv, "PixelSize")
    if px is not None:
        r.pixel_size_nm, r.pixel_size_from = px, "PixelSize (nm)"
    marker = _num(kv, "MicronMarker")
    if marker and marker > 0:
        nm = marker  # recorded in nm
        for unit in ("mm", "µm", "nm"):
            scale = {"mm": 1e6, "µm": 1e3, "nm": 1.0}[unit]
            if nm >= scale:
                r.scale_value, r.scale_unit = round(nm / scale, 6), unit
                break
    f = r.fields
    av = kv.get("AcceleratingVoltage", "")
    m = re.match(r"\s*([\d.]+)\s*(\w*)", av)
    if m:
        try:
            f["hv_kv"] = to_kv(m.group(1), "V" if m.group(2).lower().startswith("volt") or m.group(2) == "V"
                               else m.group(2) or "V")
        except ValueError:
            pass
    wd = kv.get("WorkingDistance", "")
    m = re.match(r"\s*([\d.]+)\s*(\S+)", wd)
    if m and normalise_unit(m.group(2)):
        f["wd_mm"] = round(to_nm(float(m.group(1)), m.group(2)) / 1e6, 4)
    if kv.get("Magnification"):
        f["mag"] = f"x{kv['Magnification']}"
    _copy_text(f, kv, {"detector": "SignalName", "date": "Date", "instrument": "InstructName", "time": "Time",
                       "software": "SemVersion"})
    _set(f, "tilt_deg", _num(kv, "StagePositionT"))
    f["vendor"] = "Hitachi"
    return _finish(r, width)


def read_jeol(kv: dict[str, str], width: int, height: int) -> MetaReading:
    """JEOL sidecar: ``$CM_MAG``, ``$CM_ACCEL_VOLT``, ``$SM_MICRON_BAR`` (px), ``$SM_MICRON_MARKER`` (label)."""
    r = MetaReading("JEOL")
    size = kv.get("CM_FULL_SIZE") or kv.get("SM_SCREEN_SIZE")
    mismatch = _size_mismatch(size, width, height) if size else None
    if mismatch:
        r.reason = mismatch
        return r
    bar = _num(kv, "SM_MICRON_BAR")
    marker = kv.get("SM_MICRON_MARKER")
    if marker:
        from services.scale.units import parse_length

        q = parse_length(marker)
        if q:
            r.scale_value, r.scale_unit = q
    if bar and bar > 0 and r.scale_value and r.scale_unit:
        r.bar_px = bar
        r.pixel_size_nm = to_nm(r.scale_value, r.scale_unit) / bar
        r.pixel_size_from = "$SM_MICRON_MARKER / $SM_MICRON_BAR"
    f = r.fields
    if _num(kv, "CM_MAG"):
        f["mag"] = f"x{kv['CM_MAG']}"
    hv = _num(kv, "CM_ACCEL_VOLT")
    if hv:
        f["hv_kv"] = hv / 1000.0 if hv > 100 else hv
    wd = _num(kv, "SM_WD")
    if wd:
        f["wd_mm"] = wd
    _copy_text(f, kv, {"detector": "CM_SIGNAL", "date": "CM_DATE", "instrument": "CM_INSTRUMENT"})
    f["vendor"] = "JEOL"
    return _finish(r, width)


def parse_jeol(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("$"):
            key, _, value = line[1:].partition(" ")
            out.setdefault(key.strip(), value.strip())
    return out


def read_sidecar(path: Path, width: int, height: int) -> MetaReading:
    try:
        text = read_text_file(path)
    except OSError as exc:
        return MetaReading("unknown", reason=f"sidecar cannot be read: {exc}")
    if "[SemImageFile]" in text or "PixelSize=" in text:
        return read_hitachi(parse_ini(text), width, height)
    if "$CM_" in text or "$SM_" in text:
        return read_jeol(parse_jeol(text), width, height)
    return MetaReading("unknown", reason="sidecar is neither a Hitachi nor a JEOL metadata file")


# ---- entry point -------------------------------------------------------------------------

def read_metadata(path: Path | str, width: int, height: int, sidecar: Path | str | None = None) -> MetaReading | None:
    """The instrument's own record of the pixel size, or None when the file has none."""
    reading = None
    try:
        with tifffile.TiffFile(path) as tif:
            page = cast(tifffile.TiffPage, tif.pages[0])
            tags = page.tags
            if 34118 in tags and isinstance(tags[34118].value, dict):
                reading = read_zeiss(tags[34118].value, width)
            elif 34682 in tags or 34680 in tags:
                tag = tags[34682] if 34682 in tags else tags[34680]
                value = tag.value
                if isinstance(value, dict):
                    reading = read_fei(value, width)
                else:
                    reading = MetaReading("FEI/Thermo", reason="FEI metadata tag cannot be parsed")
            elif 50431 in tags:
                reading = read_tescan(tags[50431].value, width)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, TypeError):
        reading = None  # not a TIFF, or unreadable tags: OCR will try
    if reading is None or reading.pixel_size_nm is None:
        side = None
        if sidecar is not None and Path(sidecar).exists():
            side = read_sidecar(Path(sidecar), width, height)
        if side is not None and (side.pixel_size_nm is not None or reading is None):
            reading = side
    return reading
