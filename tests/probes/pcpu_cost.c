// What a counter costs an XDP program on this host: one or three counters
// in a per-CPU array (the kernel reads the element's pointer, then this
// CPU's copy) against the same in a plain array, one row per CPU
// (bpf_get_smp_processor_id, which the JIT inlines), and no counter at all.
// Each figure is the median over 9 rounds of 20000 test runs, timed like
// bench section 1 (2026-12-06: about 1 ns a counter either way).
// Build: gcc -O2 -o pcpu_cost pcpu_cost.c -lbpf   Run (root): ./pcpu_cost
#include "probe.h"
static double run(int prog, int n) {
  unsigned char frame[64] = {0};
  frame[14] = 5;
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    total += o.duration;
  }
  return (double)total / n;
}
static int load(int map, int mode, int counters) {
  struct bpf_insn p[128]; int n = 0;
  int outs[8], no = 0;
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 0, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0);
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 2, 0, 0);
  p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 22);
  outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JGT | BPF_X, 4, 3, 0, 0);
  p[n++] = I(BPF_LDX | BPF_B | BPF_MEM, 7, 2, 14, 0);        // r7 = index (5)
  for (int c = 0; c < counters && mode; c++) {
    if (mode == 2) {
      p[n++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_smp_processor_id);
      p[n++] = I(BPF_ALU64 | BPF_LSH | BPF_K, 0, 0, 0, 6);    // cpu * 64 entries
      p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_X, 0, 7, 0, 0);
      p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, c * 8);
      p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 0, -4, 0);
    } else {
      p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 0, 7, 0, 0);
      p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, c * 8);
      p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 0, -4, 0);
    }
    p[n++] = I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map); p[n++] = I(0, 0, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4);
    p[n++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
    outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
    p[n++] = I(BPF_LDX | BPF_DW | BPF_MEM, 1, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 1, 0, 0, 1);
    p[n++] = I(BPF_STX | BPF_DW | BPF_MEM, 0, 1, 0, 0);
  }
  int o = n;
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2);
  p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  for (int i = 0; i < no; i++) p[outs[i]].off = o - outs[i] - 1;
  return load_xdp(p, n);
}
int main(int argc, char** argv) {
  pin_to_cpu(0);
  int calls = argc > 1 ? atoi(argv[1]) : 20000, rounds = argc > 2 ? atoi(argv[2]) : 9;
  int pcpu = bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "pcpu", 4, 8, 4096, NULL);
  int plain = bpf_map_create(BPF_MAP_TYPE_ARRAY, "plain", 4, 8, 64 * 64, NULL);
  struct { const char* name; int prog; } v[] = {
      {"nothing                ", load(plain, 0, 0)},
      {"1 per-CPU array counter", load(pcpu, 1, 1)},
      {"1 plain array row/CPU  ", load(plain, 2, 1)},
      {"3 per-CPU array counter", load(pcpu, 1, 3)},
      {"3 plain array row/CPU  ", load(plain, 2, 3)},
  };
  int nv = sizeof v / sizeof v[0];
  double res[8][64];
  for (int r = 0; r < rounds; r++)
    for (int k = 0; k < nv; k++) res[k][r] = run(v[k].prog, calls);
  for (int k = 0; k < nv; k++) {
    qsort(res[k], rounds, sizeof(double), cmp);
    printf("%s: %5.1f ns a call (rounds %5.1f..%5.1f)\n", v[k].name, res[k][rounds / 2], res[k][0], res[k][rounds - 1]);
  }
  return 0;
}
