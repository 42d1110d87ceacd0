#!/usr/bin/env bash
# Two versions of the packet path timed alternately: bench section 1
# (`lb-bench --quick --only datapath`) run N times for each version, in
# pairs back to back, then each figure's median and least value per version
# and the median of its ratio B / A within the pairs.
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
  # Resolved here: in the worktree, HEAD (or a branch's reflog) would name
  # the worktree's own, the commit it held from the run before.
  local commit
  commit=$(git rev-parse --verify "$rev^{commit}")
  local tree=$out/tree
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$commit"
  git -C "$tree" checkout -q --detach "$commit"
  (cd "$tree" && CARGO_TARGET_DIR=$out/target cargo build -q --release -p lb-userspace -p tests --bin lb --bin lb-bench)
  cp "$out/target/release/lb" "$out/target/release/lb-bench" "$dir/"
}
build "$a"
build "$b"
for i in $(seq 1 "$n"); do
  # Each version first in every other pair: neither always runs second.
  order="$a $b"
  [ $((i % 2)) = 0 ] && order="$b $a"
  for rev in $order; do
    "$out/$rev/lb-bench" --lb "$out/$rev/lb" --quick --only datapath --json "$out/$rev/run-$i.json" \
      > "$out/$rev/run-$i.txt" 2>&1 || echo "ab: run $i of $rev failed (see $out/$rev/run-$i.txt)"
  done
done
python3 - "$out" "$n" "$a" "$b" << 'PY'
import json, re, statistics, sys
out, n, revs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
values = {}  # figure -> rev -> {run: value}
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
                values.setdefault(f["name"], {}).setdefault(rev, {})[i] = f["value"]
            six = re.search(r"IPv6 (\d+) ns", f["note"] or "")
            if f["name"].startswith("IPv6 / IPv4") and six:
                name = "IPv6: " + f["name"].split(": ", 1)[1]
                values.setdefault(name, {}).setdefault(rev, {})[i] = float(six.group(1))
# The host has slow spells (every figure of a run 30-60 % up) that a median
# of a few runs does not always outvote: the ratio of the two runs of each
# pair, taken back to back, cancels a spell that spans the pair, and the
# smallest value is each version's cost with the least interference.
a, b = revs
print(f"{n} alternating quick runs, ns (own cost: path - trivial program)")
print(f"{'figure':56s} {'median':>13s} {'least':>13s} {'B/A':>6s}")
print(f"{'':56s} {a[:6]:>6s} {b[:6]:>6s} {a[:6]:>6s} {b[:6]:>6s} {'paired':>6s}")
for name, by_rev in values.items():
    va, vb = by_rev.get(a, {}), by_rev.get(b, {})
    cell = lambda f, v: f"{f(v.values()):6.0f}" if v else f"{'-':>6s}"
    pairs = [vb[i] / va[i] for i in va if i in vb and va[i] > 0]
    ratio = f"{statistics.median(pairs):6.2f}" if pairs else f"{'-':>6s}"
    print(f"{name[:56]:56s} {cell(statistics.median, va)} {cell(statistics.median, vb)} {cell(min, va)} {cell(min, vb)} {ratio}")
PY
