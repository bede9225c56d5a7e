#!/usr/bin/env python3
"""Verifies a strongroom audit chain from the SQLite file alone, following docs/AUDIT.md
(Python standard library only; no strongroom code).

usage: verify_audit_sqlite.py PATH.db
Prints 'ok <rows> rows, head <seq> <hash>' and exits 0, or
'first bad sequence number <seq>: <why>' and exits 1.
"""
import hashlib
import json
import sqlite3
import struct
import sys


def lp(text: str) -> bytes:
    b = text.encode("utf-8")
    return struct.pack(">I", len(b)) + b


def canonical(row) -> bytes:
    seq, time, actor, action, cred, kind, owner, outcome, details = row
    out = b"strongroom/audit/v1" + struct.pack(">Qq", seq, time)
    out += lp(actor) + lp(action) + lp(cred) + lp(kind) + lp(owner) + lp(outcome)
    d = json.loads(details)
    items = sorted(d.items(), key=lambda kv: kv[0].encode("utf-8"))
    out += struct.pack(">I", len(items))
    for k, v in items:
        out += lp(k) + lp(v)
    return out


def main(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, details,"
        " prev_hash, hash FROM audit ORDER BY seq"
    )
    expected, prev, n = 1, bytes(32), 0
    for r in rows:
        seq, prev_hash, h = r[0], bytes(r[9]), bytes(r[10])
        if seq != expected:
            print(f"first bad sequence number {expected}: found row {seq} instead")
            return 1
        if prev_hash != prev:
            print(f"first bad sequence number {seq}: prev_hash does not link")
            return 1
        if hashlib.sha256(prev + canonical(r[:9])).digest() != h:
            print(f"first bad sequence number {seq}: hash does not match contents")
            return 1
        prev, expected, n = h, expected + 1, n + 1
    print(f"ok {n} rows, head {expected - 1} {prev.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
