// What one random cache line of a large BPF array costs an XDP program on this
// host: the floor under a flow-table lookup (docs/performance.md, section 1).
// For each array size, 7 rounds of 20000 test runs reading LOADS lines (1-4,
// independent of each other) at random indexes against the same lines every
// time; prints the difference per run. With LOADS > 1 it shows whether misses
// in one program run overlap: on the Intel host of 2026-12-07, 1, 2 and 4
// lines of a 256 MiB array cost 282, 292 and 297 ns (they do; the purge
// program reads its slots in groups for that reason, lb-ebpf/src/purge.rs).
// Build: gcc -O2 -o line_cost line_cost.c -lbpf   Run (root): ./line_cost [LOADS]
#include "probe.h"
static double run(int prog, uint32_t* idx, int n) {
  unsigned char frame[64] = {0};
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    memcpy(frame + 14, &idx[4 * i], 16);
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    total += o.duration;
  }
  return (double)total / n;
}
int main(int argc, char** argv) {
  pin_to_cpu(0);
  uint32_t sizes[] = {16384, 131072, 1048576, 4194304};
  int calls = 20000, rounds = 7;
  uint32_t* idx = malloc(calls * 16); int K = argc > 1 ? atoi(argv[1]) : 1;
  if (K < 1 || K > 4) { fprintf(stderr, "LOADS: 1 to 4\n"); return 2; }
  for (int s = 0; s < 4; s++) {
    uint32_t n = sizes[s];
    int map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "probe", 4, 64, n, NULL);
    if (map < 0) { perror("map"); return 1; }
    struct bpf_insn insns[80]; int k = 0;
    insns[k++] = I(BPF_LDX | BPF_W | BPF_MEM, 6, 1, 0, 0);      // r6 = data
    insns[k++] = I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0);      // r3 = data_end
    insns[k++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 6, 0, 0);
    insns[k++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 30);  // 4 indexes after 14 bytes
    int jout = k; insns[k++] = I(BPF_JMP | BPF_JGT | BPF_X, 4, 3, 0, 0);
    for (int j = 0; j < K; j++) {
      insns[k++] = I(BPF_LDX | BPF_W | BPF_MEM, 5, 6, 14 + 4 * j, 0);
      insns[k++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 5, -4, 0);
      insns[k++] = I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map); insns[k++] = I(0, 0, 0, 0, 0);
      insns[k++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
      insns[k++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4);
      insns[k++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
      insns[k++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1, 0);
      insns[k++] = I(BPF_LDX | BPF_DW | BPF_MEM, 7 + (j & 1), 0, 0, 0);  // the line
    }
    insns[jout].off = k - jout - 1;
    insns[k++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2);
    insns[k++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    int prog = load_xdp(insns, k);
    double hot[7], rnd[7], diff[7];
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int r = 0; r < rounds; r++) {
      for (int i = 0; i < 4 * calls; i++) idx[i] = 7 + (i & 3);
      hot[r] = run(prog, idx, calls);
      for (int i = 0; i < 4 * calls; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; idx[i] = x % n; }
      rnd[r] = run(prog, idx, calls);
      diff[r] = rnd[r] - hot[r];
    }
    qsort(diff, rounds, sizeof(double), cmp);
    printf("array of %8u lines (%6.1f MiB): %d random line(s) read cost %.0f ns more than hot ones (rounds: %.0f..%.0f)\n", n,
           n * 64.0 / 1048576, K, diff[rounds / 2], diff[0], diff[rounds - 1]);
    close(prog); close(map);
  }
  return 0;
}
