#!/usr/bin/env bash
# Two versions of the packet path timed alternately: bench section 1
# (`lb-bench --quick --only datapath`) run N times for each version, one
# after the other, then the median of each figure per version.
# Section 1 runs the XDP program built into lb-bench itself (lb-userspace
# embeds it when it is compiled), so each version is built whole, lb-bench
# included: swapping only the `lb` binary times the same program twice.
# usage (root, from the project's root):
#   tests/probes/ab_datapath.sh REV_A REV_B [N=6]
# REV: a commit, or `work` for the working tree as it is. Builds and runs
# in target/ab/; commits are built in a git worktree there, kept for the
# next run (`git worktree remove --force target/ab/tree` drops it).
set -euo pipefail
a=${1:?usage: ab_datapath.sh REV_A REV_B [N]}
b=${2:?usage: ab_datapath.sh REV_A REV_B [N]}
n=${3:-6}
root=$(pwd)
out=$root/target/ab
mkdir -p "$out"

# Builds version $1 into $out/$1/{lb,lb-bench}.
build() {
  local rev=$1 dir=$out/$1
  mkdir -p "$dir"
  if [ "$rev" = work ]; then
    cargo build -q --release -p lb-userspace -p tests --bin lb --bin lb-bench
    cp target/release/lb target/release/lb-bench "$dir/"
    return
  fi
  local tree=$out/tree
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$rev"
  git -C "$tree" checkout -q --detach "$rev"
  (cd "$tree" && CARGO_TARGET_DIR=$out/target cargo build -q --release -p lb-userspace -p tests --bin lb --bin lb-bench)
  cp "$out/target/release/lb" "$out/target/release/lb-bench" "$dir/"
}
build "$a"
build "$b"
for i in $(seq 1 "$n"); do
  for rev in "$a" "$b"; do
    "$out/$rev/lb-bench" --lb "$out/$rev/lb" --quick --only datapath --json "$out/$rev/run-$i.json" \
      > "$out/$rev/run-$i.txt" 2>&1 || echo "ab: run $i of $rev failed (see $out/$rev/run-$i.txt)"
  done
done
python3 - "$out" "$n" "$a" "$b" << 'PY'
import json, re, statistics, sys
out, n, revs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
values = {}  # figure -> rev -> [values]
for rev in revs:
    for i in range(1, n + 1):
        try:
            figures = json.load(open(f"{out}/{rev}/run-{i}.json"))["figures"]
        except (OSError, ValueError):
            continue
        for f in figures:
            if f["value"] is None or not f["section"].startswith("1."):
                continue
            if f["unit"] == "ns":
                values.setdefault(f["name"], {}).setdefault(rev, []).append(f["value"])
            six = re.search(r"IPv6 (\d+) ns", f["note"] or "")
            if f["name"].startswith("IPv6 / IPv4") and six:
                name = "IPv6: " + f["name"].split(": ", 1)[1]
                values.setdefault(name, {}).setdefault(rev, []).append(float(six.group(1)))
print(f"medians of {n} alternating quick runs, ns (own cost: path - trivial program)")
print(f"{'figure':60s} " + " ".join(f"{r[:12]:>12s}" for r in revs))
for name, by_rev in values.items():
    cells = [f"{statistics.median(by_rev[r]):12.0f}" if r in by_rev else f"{'-':>12s}" for r in revs]
    print(f"{name[:60]:60s} " + " ".join(cells))
PY
