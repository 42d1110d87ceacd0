#!/usr/bin/env bash
# Where the XDP program spends its time on one path of bench section 1, on
# machines without a PMU (no cache-miss counters): perf samples CPU 0 with
# its cpu-clock, a timer, while `lb-profile` runs the path there, and each
# sample's address is placed in the JIT's machine code of `lb` (and of `lb6`
# and its functions for IPv6). Prints the instructions that hold the most
# samples, each after the instructions leading to it: a sample lands on the
# instruction that waits, most often the one after a load that missed.
# usage (root, from the project's root):
#   tests/probes/profile.sh hot|hot6|random|new|new6|new6udp [SECONDS=12] [TOP=12]
# Output and raw data in target/profile/PATH/.
set -euo pipefail
path=${1:?usage: profile.sh hot|hot6|random|new|new6|new6udp [SECONDS] [TOP]}
secs=${2:-12}
top=${3:-12}
out=target/profile/$path
mkdir -p "$out"
command -v perf > /dev/null || apt-get install -y linux-perf
command -v objdump > /dev/null || apt-get install -y binutils
cargo build -q --release -p tests --bin lb-profile
gcc -O2 -o "$out/dump_jit" tests/probes/dump_jit.c
target/release/lb-profile "$path" "$secs" > "$out/run.log" 2>&1 &
pid=$!
until grep -q READY "$out/run.log"; do
  kill -0 $pid
  sleep 0.5
done
programs="lb"
[ "$path" = hot6 ] && programs="lb lb6"
case $path in new6 | new6udp) programs="lb lb6 lb6_other" ;; esac
for p in $programs; do
  "$out/dump_jit" "$p" "$out/$p.jit" > "$out/$p.funcs"
  objdump -b binary -m i386:x86-64 -D "$out/$p.jit" > "$out/$p.dis"
done
perf record -q -e cpu-clock -F 20000 -C 0 -o "$out/perf.data" -- sleep $((secs > 5 ? secs - 3 : 2))
wait $pid
tail -1 "$out/run.log"
perf script -i "$out/perf.data" -F ip > "$out/ips.txt" 2> /dev/null
python3 - "$out" "$top" $programs << 'PY'
import re, sys
out, top, programs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
funcs = []  # (start address, end address, program, offset in its image, function index)
for p in programs:
    at = 0
    for line in open(f"{out}/{p}.funcs"):
        _, i, ksym, length = line.split()
        start = int(ksym, 16)
        funcs.append((start, start + int(length), p, at, int(i)))
        at += int(length)
samples, total = {}, 0
for line in open(f"{out}/ips.txt"):
    ip = int(line.split()[0], 16)
    total += 1
    for start, end, p, at, _ in funcs:
        if start <= ip < end:
            key = (p, at + ip - start)
            samples[key] = samples.get(key, 0) + 1
code = {}
for p in programs:
    lines = [l.rstrip() for l in open(f"{out}/{p}.dis") if re.match(r"\s+[0-9a-f]+:\t", l)]
    code[p] = ([int(l.split(":")[0], 16) for l in lines], lines)
ours = sum(samples.values())
print(f"{total} samples on CPU 0, {ours} in {' and '.join(programs)} ({100 * ours / max(total, 1):.1f}%)")
for p in programs:
    n = sum(v for (q, _), v in samples.items() if q == p)
    print(f"  {p}: {n} samples ({100 * n / max(ours, 1):.1f}% of the program's)")
for (p, off), n in sorted(samples.items(), key=lambda kv: -kv[1])[:top]:
    func = max((f for f in funcs if f[2] == p and f[3] <= off), key=lambda f: f[3])
    print(f"\n{n} samples ({100 * n / max(ours, 1):.1f}%) at {p} +{off:#x} (function {func[4]})")
    offsets, lines = code[p]
    i = offsets.index(off) if off in offsets else None
    for l in (lines[max(0, i - 4): i + 1] if i is not None else []):
        print("   ", l[:100])
PY
