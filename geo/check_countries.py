#!/usr/bin/env python3
"""Validate geo/countries.csv (and, if `maxminddb` is installed, that every
country_code in the shipped .mmdb has a row).  Usage: python3 geo/check_countries.py"""
import csv, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
errors = []
with open(os.path.join(HERE, "countries.csv"), newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = next(reader)
    if header != ["iso", "name", "continent", "lat", "lon"]:
        errors.append(f"bad header {header}")
    rows = list(reader)
seen = set()
for n, r in enumerate(rows, start=2):
    if len(r) != 5:
        errors.append(f"line {n}: {len(r)} fields"); continue
    iso, name, cont, lat, lon = r
    if len(iso) != 2 or not iso.isascii() or not iso.isupper(): errors.append(f"line {n}: iso {iso!r}")
    if iso in seen: errors.append(f"line {n}: duplicate {iso}")
    seen.add(iso)
    if not name.strip(): errors.append(f"line {n}: empty name")
    if cont not in {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}: errors.append(f"line {n}: continent {cont!r}")
    try:
        la, lo = float(lat), float(lon)
        if not (-90 <= la <= 90 and -180 <= lo <= 180): errors.append(f"line {n}: {iso} out of range")
        if len(lat.partition(".")[2]) > 4 or len(lon.partition(".")[2]) > 4: errors.append(f"line {n}: >4 decimals")
    except ValueError:
        errors.append(f"line {n}: {iso} lat/lon not numbers")
try:
    import maxminddb
except ImportError:
    print("note: maxminddb not installed, mmdb coverage not checked (pip install maxminddb)")
else:
    with maxminddb.open_database(os.path.join(HERE, "geo-whois-asn-country.mmdb")) as db:
        codes = {rec.get("country_code") for _, rec in db}
    missing = sorted(c for c in codes if c not in seen)
    if missing: errors.append(f"mmdb codes without a row: {missing}")
    print(f"mmdb: {len(codes)} distinct country_code values, all covered" if not missing else "")
for e in errors: print("error:", e)
print(f"{len(rows)} rows, {len(errors)} errors")
sys.exit(1 if errors else 0)
