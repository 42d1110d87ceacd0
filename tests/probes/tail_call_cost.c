// What entering a second XDP program by a tail call costs on this host, and
// what a filter check (an array read of the ports) costs before it
// (docs/performance.md, section 1: `lb` enters `lb6` by a tail call).
// A tail call whose key the verifier knows is a direct jump patched into the
// JIT image; one whose key it does not know jumps through the prog array,
// an indirect jump (a retpoline on hosts with that Spectre v2 mitigation).
// Each figure is the median over 9 rounds of 20000 test runs, net of a
// program that only returns XDP_PASS, timed like bench section 1.
// Build: gcc -O2 -o tail_call_cost tail_call_cost.c -lbpf   Run (root): ./tail_call_cost
#include "probe.h"
#define LEN(a) ((int)(sizeof a / sizeof a[0]))
static double run(int prog, int n) {
  unsigned char frame[64] = {0};
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    if (o.retval != 2) { fprintf(stderr, "retval %d: the tail call did not happen\n", o.retval); exit(1); }
    total += o.duration;
  }
  return (double)total / n;
}
static int load(struct bpf_insn* insns, int n) {
  return load_xdp(insns, n);
}
// Median over 9 rounds of `prog`'s cost net of `base`'s, alternating.
static double net(int base, int prog) {
  double d[9];
  for (int r = 0; r < 9; r++) { double x = run(base, 20000); d[r] = run(prog, 20000) - x; }
  qsort(d, 9, sizeof d[0], cmp);
  return d[4];
}
int main(void) {
  pin_to_cpu(0);
  struct bpf_insn pass[] = {I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2), I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)};
  int target = load(pass, LEN(pass)), base = load(pass, LEN(pass));
  int array = bpf_map_create(BPF_MAP_TYPE_PROG_ARRAY, "progs", 4, 4, 1, NULL);
  int filter = bpf_map_create(BPF_MAP_TYPE_ARRAY, "filter", 4, 1, 65536, NULL);
  uint32_t zero = 0;
  if (array < 0 || filter < 0 || bpf_map_update_elem(array, &zero, &target, 0)) { perror("maps"); return 1; }
  // Key 0, known to the verifier: a direct jump.
  struct bpf_insn direct[] = {
      I(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, array), I(0, 0, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 0),
      I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_tail_call),
      I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1), I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)};
  // Key read from the frame (its first byte, 0): unknown to the verifier.
  struct bpf_insn indirect[] = {
      I(BPF_LDX | BPF_W | BPF_MEM, 4, 1, 4, 0),      // r4 = data_end
      I(BPF_LDX | BPF_W | BPF_MEM, 5, 1, 0, 0),      // r5 = data
      I(BPF_ALU64 | BPF_MOV | BPF_X, 0, 5, 0, 0),
      I(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, 1),
      I(BPF_JMP | BPF_JGT | BPF_X, 0, 4, 6, 0),      // short frame: out
      I(BPF_LDX | BPF_B | BPF_MEM, 3, 5, 0, 0),      // r3 = the first byte
      I(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, array), I(0, 0, 0, 0, 0),
      I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_tail_call),
      I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1), I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1), I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)};
  // A filter check before a direct tail call: an IPv6 destination's words
  // folded with the destination port, one byte of a 64 Ki array read.
  struct bpf_insn check[] = {
      I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 0, 0),      // r2 = data
      I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0),      // r3 = data_end
      I(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),    // r6 = ctx
      I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 2, 0, 0),
      I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 58),
      I(BPF_JMP | BPF_JGT | BPF_X, 4, 3, 16, 0),     // short frame: to the tail call
      I(BPF_LDX | BPF_W | BPF_MEM, 5, 2, 38, 0),
      I(BPF_LDX | BPF_W | BPF_MEM, 4, 2, 42, 0),
      I(BPF_ALU64 | BPF_XOR | BPF_X, 5, 4, 0, 0),
      I(BPF_LDX | BPF_W | BPF_MEM, 4, 2, 46, 0),
      I(BPF_ALU64 | BPF_XOR | BPF_X, 5, 4, 0, 0),
      I(BPF_LDX | BPF_H | BPF_MEM, 4, 2, 56, 0),
      I(BPF_ALU64 | BPF_XOR | BPF_X, 5, 4, 0, 0),
      I(BPF_ALU64 | BPF_AND | BPF_K, 5, 0, 0, 0xffff),
      I(BPF_STX | BPF_W | BPF_MEM, 10, 5, -4, 0),
      I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, filter), I(0, 0, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
      I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
      I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
      I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1, 0),
      I(BPF_LDX | BPF_B | BPF_MEM, 0, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),    // the tail call, as `direct`
      I(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, array), I(0, 0, 0, 0, 0),
      I(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 0),
      I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_tail_call),
      I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1), I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)};
  int d = load(direct, LEN(direct)), i = load(indirect, LEN(indirect)), c = load(check, LEN(check));
  printf("trivial program's call: %.1f ns\n", run(base, 20000));
  printf("tail call, key known to the verifier (direct jump): %.1f ns\n", net(base, d));
  printf("tail call, key read from the frame (indirect jump): %.1f ns\n", net(base, i));
  printf("filter check, then a direct tail call: %.1f ns\n", net(base, c));
  return 0;
}
