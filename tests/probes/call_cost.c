// What a BPF-to-BPF call costs an XDP program on this host: a program that
// calls a subprogram that only returns, 0, 1, 2 and 4 times. A subprogram's
// return goes through the kernel's return thunk where the CPU needs one (on
// these AMD hosts, the SRSO mitigation's "safe RET"): each call cost 6-7 ns
// here (2026-12-06), where a tail call whose key the verifier knows costs 2
// (tail_call_cost.c). Each figure is the median over 9 rounds of 20000 test
// runs, timed like bench section 1.
// Build: gcc -O2 -o call_cost call_cost.c -lbpf   Run (root): ./call_cost
#include "probe.h"
static double run(int prog, int n) {
  unsigned char frame[64] = {0};
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    total += o.duration;
  }
  return (double)total / n;
}
static int load(int calls) {
  struct bpf_insn p[64]; int n = 0;
  for (int c = 0; c < calls; c++) {
    // call the subprogram at the end: imm = its index - (this index + 1)
    p[n++] = I(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_CALL, 0, 0);
  }
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2);
  p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  int sub = n;
  if (calls) {
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1);
    p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  }
  for (int c = 0; c < calls; c++) p[c].imm = sub - c - 1;
  return load_xdp(p, n);
}
int main(int argc, char** argv) {
  pin_to_cpu(0);
  int calls = 20000, rounds = 9;
  int progs[] = {load(0), load(1), load(2), load(4)};
  const char* names[] = {"no call ", "1 call  ", "2 calls ", "4 calls "};
  double res[4][16];
  for (int r = 0; r < rounds; r++) for (int k = 0; k < 4; k++) res[k][r] = run(progs[k], calls);
  for (int k = 0; k < 4; k++) {
    qsort(res[k], rounds, sizeof(double), cmp);
    printf("%s: %5.1f ns a run (rounds %5.1f..%5.1f)\n", names[k], res[k][rounds / 2], res[k][0], res[k][rounds - 1]);
  }
  return 0;
}
