// What one random cache line costs an XDP program when the memory is the
// kernel's direct map (huge pages) rather than vmalloc (4 KiB pages): the
// same read as line_cost.c, through an array of maps whose inner arrays are
// small enough (at most 32 KiB with their header) for the kernel to kmalloc
// them. The outer lookup (an array of map pointers) is part of the cost.
// Usage: ./inner_map_cost [slots per inner array] [total slots]
// Build: gcc -O2 -o inner_map_cost inner_map_cost.c -lbpf   Run (root).
// 2026-12-05, this host (docs/performance.md, section 1): 9216 inner arrays
// of 448 lines (252 MiB, kmalloc'd) 172-209 ns more than a hot line (four
// runs), against 248-277 for one flat 256 MiB array in the same hour;
// 16384 of 256 lines 229-248; 1024 of 4096 lines (vmalloc'd again) 298.
#include "probe.h"
int main(int argc, char** argv) {
  pin_to_cpu(0);
  uint32_t inner_n = argc > 1 ? atoi(argv[1]) : 256;
  uint32_t total_lines = argc > 2 ? atoi(argv[2]) : 4194304;
  uint32_t outer_n = total_lines / inner_n;
  int calls = 20000, rounds = 7;
  int tmpl = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tmpl", 4, 64, inner_n, NULL);
  LIBBPF_OPTS(bpf_map_create_opts, mo, .inner_map_fd = tmpl);
  int outer = bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "outer", 4, 4, outer_n, &mo);
  if (outer < 0) { perror("outer"); return 1; }
  for (uint32_t k = 0; k < outer_n; k++) {
    int m = bpf_map_create(BPF_MAP_TYPE_ARRAY, "in", 4, 64, inner_n, NULL);
    if (m < 0) { perror("inner"); return 1; }
    if (bpf_map_update_elem(outer, &k, &m, 0)) { perror("upd"); return 1; }
    close(m);
  }
  // The frame carries the outer index (offset 14) and the inner one (18).
  struct bpf_insn insns[] = {
      I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 0, 0),     // r2 = data
      I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0),     // r3 = data_end
      I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 2, 0, 0),
      I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 22),
      I(BPF_JGT | BPF_JMP | BPF_X, 4, 3, 16, 0),    // if r4 > r3 goto out
      I(BPF_LDX | BPF_W | BPF_MEM, 5, 2, 14, 0),    // outer key
      I(BPF_STX | BPF_W | BPF_MEM, 10, 5, -4, 0),
      I(BPF_LDX | BPF_W | BPF_MEM, 5, 2, 18, 0),    // inner key
      I(BPF_STX | BPF_W | BPF_MEM, 10, 5, -8, 0),
      I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, outer), I(0, 0, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
      I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
      I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
      I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 6, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_X, 1, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
      I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -8),
      I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
      I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1, 0),
      I(BPF_LDX | BPF_DW | BPF_MEM, 0, 0, 0, 0),    // the line
      I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2),
      I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  int prog = load_xdp(insns, sizeof insns / sizeof insns[0]);
  double diff[7];
  uint64_t x = 0x2545f4914f6cdd1dull;
  for (int r = 0; r < rounds; r++) {
    unsigned char frame[64] = {0};
    double hot = 0, rnd = 0;
    for (int pass = 0; pass < 2; pass++) {
      uint64_t t = 0;
      for (int i = 0; i < calls; i++) {
        uint32_t v;
        if (pass == 0) v = 7; else { x ^= x << 13; x ^= x >> 7; x ^= x << 17; v = x % total_lines; }
        uint32_t o_ = v / inner_n, in_ = v % inner_n;
        memcpy(frame + 14, &o_, 4); memcpy(frame + 18, &in_, 4);
        LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
        if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
        t += o.duration;
      }
      if (pass == 0) hot = (double)t / calls; else rnd = (double)t / calls;
    }
    diff[r] = rnd - hot;
  }
  qsort(diff, rounds, sizeof(double), cmp);
  printf("array of maps: %u x %u lines (%.1f MiB): random costs %.0f ns more (rounds %.0f..%.0f)\n", outer_n, inner_n,
         total_lines * 64.0 / 1048576, diff[rounds / 2], diff[0], diff[rounds - 1]);
  return 0;
}
