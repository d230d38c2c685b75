#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes a copy of a photo with the EXIF tags given, through Pillow (the reference writer the
metadata tests check Spotter's own EXIF reader against).

    write_exif.py SRC DST [--width N] [--datetime "2019:06:15 14:30:05"] [--offset +02:00]
                  [--make Canon] [--model "Canon EOS 5D"] [--gps LAT,LON]

DST's extension picks the format (.jpg, .png: an eXIf chunk, .webp, .tif). Without any tag the
copy has no EXIF block at all. GPS is written as degrees/minutes/seconds rationals with the
N/S and E/W references, as cameras do.
"""

import argparse
from fractions import Fraction

from PIL import Image

IFD_EXIF = 0x8769
IFD_GPS = 0x8825
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4


def dms(value):
    """Degrees, minutes and seconds of |value| as rationals (seconds to 1/10000)."""
    value = abs(value)
    degrees = int(value)
    minutes_f = (value - degrees) * 60
    minutes = int(minutes_f)
    seconds = Fraction(round((minutes_f - minutes) * 60 * 10000), 10000)
    return (Fraction(degrees), Fraction(minutes), seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--width", type=int, help="resize to this width first (aspect kept)")
    p.add_argument("--datetime", help='DateTimeOriginal, "YYYY:MM:DD HH:MM:SS"')
    p.add_argument("--offset", help="OffsetTimeOriginal, e.g. +02:00")
    p.add_argument("--make")
    p.add_argument("--model")
    p.add_argument("--gps", help="LAT,LON in signed degrees")
    a = p.parse_args()

    img = Image.open(a.src).convert("RGB")
    if a.width:
        img = img.resize((a.width, max(1, round(img.height * a.width / img.width))))
    exif = Image.Exif()
    if a.make is not None:
        exif[MAKE] = a.make
    if a.model is not None:
        exif[MODEL] = a.model
    if a.datetime:
        exif[DATETIME] = a.datetime  # the file's change time; readers must prefer the original
        sub = {DATETIME_ORIGINAL: a.datetime}
        if a.offset:
            sub[OFFSET_TIME_ORIGINAL] = a.offset
        exif[IFD_EXIF] = sub
    if a.gps:
        lat, lon = (float(x) for x in a.gps.split(","))
        exif[IFD_GPS] = {
            GPS_LAT_REF: "N" if lat >= 0 else "S",
            GPS_LAT: dms(lat),
            GPS_LON_REF: "E" if lon >= 0 else "W",
            GPS_LON: dms(lon),
        }
    kwargs = {}
    if len(exif):
        kwargs["exif"] = exif.tobytes()
    if a.dst.lower().endswith((".jpg", ".jpeg", ".webp")):
        kwargs["quality"] = 90
    img.save(a.dst, **kwargs)


if __name__ == "__main__":
    main()
