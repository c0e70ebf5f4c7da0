"""Formats kmip-bench results (JSON lines) as the Markdown table of BENCHMARKS.md."""
import json
import platform
import subprocess
import sys

rows, sleeping, memory, fill, durable = {}, {}, None, None, None
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "durable_write_us" in r:
        durable = r["durable_write_us"]
    elif r.get("memory"):
        memory = r
    elif r["row"] == "fill":
        fill = r
    else:
        table = sleeping if r.get("client") == "sleeping" else rows
        table.setdefault(r["row"], {})[r["server"]] = r["per_second"]
seconds = sys.argv[2]
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"## KMIP key server: tresor kms and pykmip-server\n")
print(f"Measured with `bench/kmip {seconds}` on {cpu} cores ({platform.machine()}), client and server on the same machine,")
print("the same Rust client (`kmip-bench`, KMIP 1.4 negotiated) against each; every operation over mutual TLS.")
print("Each client connection sends its requests back to back and polls up to 200 µs for each answer;")
print("the clients run on one thread with a single-threaded runtime.\n")
def table(rows):
    print("| operation | tresor kms (ops/s) | pykmip-server 0.11 (ops/s) | ratio |")
    print("|---|---:|---:|---:|")
    for name, v in rows.items():
        t, p = v.get("tresor", 0), v.get("pykmip", 0)
        ratio = f"{t / p:.0f}x" if p else "n/a"
        print(f"| {name} | {t:,.0f} | {p:,.0f} | {ratio} |")


table(rows)
if sleeping:
    print("\nThe same rows with a client that does not poll: it sleeps until each answer comes, as")
    print("vCenter's and PyKMIP's own clients do (`kmip-bench --no-poll`, in the same run).\n")
    table(sleeping)
if fill:
    print(f"\nFilling tresor kms with {fill['ops']:,} AES-256 keys over 16 connections: {fill['per_second']:,.0f} Create/s.")
if memory:
    print(
        f"With {memory['keys']:,} keys stored: server resident memory {memory['rss_kb'] / 1024:.0f} MB "
        f"(peak {memory['hwm_kb'] / 1024:.0f} MB), database {memory['db_kb'] / 1024:.0f} MB on disk."
    )
if durable:
    print(
        f"One durable 4 KiB write (`dd oflag=dsync`) took {durable:.0f} µs on the database's disk: a "
        f"Create on one connection waits for one, so one connection cannot exceed "
        f"{1e6 / durable:,.0f} Create/s on this disk."
    )
print()
