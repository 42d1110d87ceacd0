// What one random cache line of a large BPF array costs an XDP program on this
// host: the floor under a flow-table lookup (docs/performance.md, section 1).
// For each array size, 7 rounds of 20000 test runs reading one line at a
// random index against the same line every time; prints the difference.
// Build: gcc -O2 -o line_cost line_cost.c -lbpf   Run (root): ./line_cost
//
// Cost of one random 64-byte-line read from a BPF array of N entries, from XDP,
// timed like bench section 1 (one BPF_PROG_TEST_RUN per frame, pinned CPU 0).
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#define I(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
static int cmp(const void* a, const void* b) { double x = *(double*)a, y = *(double*)b; return x < y ? -1 : x > y; }
static double run(int prog, uint32_t* idx, int n) {
  unsigned char frame[64] = {0};
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    memcpy(frame + 14, &idx[i], 4);
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    total += o.duration;
  }
  return (double)total / n;
}
int main(int argc, char** argv) {
  cpu_set_t set; CPU_ZERO(&set); CPU_SET(0, &set); sched_setaffinity(0, sizeof set, &set);
  uint32_t sizes[] = {16384, 131072, 1048576, 4194304};
  int calls = 20000, rounds = 7;
  uint32_t* idx = malloc(calls * 4);
  for (int s = 0; s < 4; s++) {
    uint32_t n = sizes[s];
    int map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "probe", 4, 64, n, NULL);
    if (map < 0) { perror("map"); return 1; }
    struct bpf_insn insns[] = {
        I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 0, 0),     // r2 = data
        I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0),     // r3 = data_end
        I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 2, 0, 0),   // r4 = r2
        I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 18),  // r4 += 18
        I(BPF_JMP | BPF_JGT | BPF_X, 4, 3, 9, 0),     // if r4 > r3 goto out
        I(BPF_LDX | BPF_W | BPF_MEM, 5, 2, 14, 0),    // r5 = index
        I(BPF_STX | BPF_W | BPF_MEM, 10, 5, -4, 0),   // *(u32*)(fp-4) = r5
        I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map), I(0, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1, 0),
        I(BPF_LDX | BPF_DW | BPF_MEM, 0, 0, 0, 0),    // the line
        I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2),   // out: XDP_PASS
        I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    char log[4096];
    LIBBPF_OPTS(bpf_prog_load_opts, lo, .log_buf = log, .log_size = sizeof log, .log_level = 1);
    int prog = bpf_prog_load(BPF_PROG_TYPE_XDP, "probe", "GPL", insns, sizeof insns / sizeof insns[0], &lo);
    if (prog < 0) { perror("load"); fputs(log, stderr); return 1; }
    double hot[7], rnd[7], diff[7];
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int r = 0; r < rounds; r++) {
      for (int i = 0; i < calls; i++) idx[i] = 7;
      hot[r] = run(prog, idx, calls);
      for (int i = 0; i < calls; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; idx[i] = x % n; }
      rnd[r] = run(prog, idx, calls);
      diff[r] = rnd[r] - hot[r];
    }
    qsort(diff, rounds, sizeof(double), cmp);
    printf("array of %8u lines (%6.1f MiB): random line read costs %.0f ns more than a hot one (rounds: %.0f..%.0f)\n", n,
           n * 64.0 / 1048576, diff[rounds / 2], diff[0], diff[rounds - 1]);
    close(prog); close(map);
  }
  return 0;
}
