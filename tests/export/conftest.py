"""Images with instrument metadata, made in memory, for the metadata formats' tests."""

from __future__ import annotations

import io

import numpy as np
import tifffile

FEI = ("[User]\r\nDate=10/27/2016\r\nTime=01:16:51 PM\r\nUser=operator1\r\n[System]\r\nSoftware=7.6.1\r\n"
       "SystemType=Teneo\r\n[Beam]\r\nHV=2000\r\n[EBeam]\r\nBeamCurrent=5e-11\r\n[Scan]\r\nPixelWidth=7.7e-09\r\n"
       "HorFieldsize=4.928e-07\r\n[EScan]\r\nDwell=1e-05\r\n[Stage]\r\nStageX=0.001\r\nStageY=0.002\r\n"
       "StageZ=0.005\r\nStageT=0.1\r\nWorkingDistance=0.0096\r\n[Vacuum]\r\nChPressure=0.003\r\n[Image]\r\n"
       "ResolutionX=64\r\n[Detectors]\r\nName=ETD\r\nMode=SE\r\n")
TESCAN = (b"\x00\x01thumbnail\x00AccFrames=2\r\nDate=2023-03-24\r\nTime=08:08:25\r\nDevice=TESCAN AMBER\r\n"
          b"DeviceModel=S8251G\r\n"
          b"FullUserName=A. Operator\r\nSoftwareVersion=Essence 1.1\r\nHV=10000.0\r\nPixelSizeX=0.0000000039737\r\n"
          b"WD=0.005990\r\nChamberPressure=0.002\r\nStageTilt=10.0\r\nStageX=0.001\r\nDetector=E-T\r\n")


def tiff_with_tag(code: int, value: bytes | str, w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    dtype = "s" if isinstance(value, str) else "B"
    payload = value if isinstance(value, str) else np.frombuffer(value, np.uint8)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)
    tifffile.imwrite(buf, arr, extratags=[(code, dtype, len(value), payload, True)])
    return buf.getvalue()


def fei_tiff(seed: int = 0) -> bytes:
    return tiff_with_tag(34682, FEI, seed=seed)


def tescan_tiff(seed: int = 0) -> bytes:
    return tiff_with_tag(50431, TESCAN, seed=seed)
