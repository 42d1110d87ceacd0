// Whether two CPUs running XDP test runs at once slow each other on this
// host, for programs that write no line the other CPU touches: dependent
// multiplies (compute only), dependent loads of one map value's line (L1
// hits), the ingress interface's index (ctx->ingress_ifindex), dependent
// loads over 32 lines with 2 KiB of code, and a helper call
// (bpf_redirect). Each is timed on CPU 0 alone and on CPUs 0 and 1 at
// once, net of a trivial program timed the same way just before. 2026-12-06
// (veth ifindex): 0.93-1.11 two / one for each (the interface index: a
// few ns either way), so the host itself does not slow a program that
// shares nothing by more than about 10 %. (The call to bpf_redirect costs
// 18-22 ns a test run here, alone.)
// Build: gcc -O2 -pthread -o two_cpu_cost two_cpu_cost.c -lbpf
// Run (root): ./two_cpu_cost [calls=20000] [rounds=9] [ingress ifindex=0]
#include "probe.h"
#include <pthread.h>
static int calls = 20000, ifindex = 0;
static double run(int prog) {
  unsigned char frame[64] = {0};
  uint64_t total = 0;
  for (int i = 0; i < calls; i++) {
    struct xdp_md ctx = {.data_end = sizeof frame, .ingress_ifindex = ifindex};
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (ifindex) { o.ctx_in = &ctx; o.ctx_size_in = sizeof ctx; }
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    total += o.duration;
  }
  return (double)total / calls;
}
static int load(int kind, int map, int len) {
  struct bpf_insn p[2048]; int n = 0, out = -1;
  if (kind == 0) {  // nothing: the trivial program
  } else if (kind == 1) {  // dependent multiplies
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 3);
    for (int i = 0; i < len; i++) p[n++] = I(BPF_ALU64 | BPF_MUL | BPF_K, 0, 0, 0, 0x9e37);
  } else if (kind == 3) {  // the ingress interface's index, read twice
    p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 12, 0);
    p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 12, 0);
  } else if (kind == 5) {  // a helper call: bpf_redirect(2, 0)
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 2);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 0);
    p[n++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_redirect);
  } else {  // dependent loads from one map value: 2, of its first line; 4, over 32 lines with 2 KiB of code
    p[n++] = I(BPF_ST | BPF_W | BPF_MEM, 10, 0, -4, 0);
    p[n++] = I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map); p[n++] = I(0, 0, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4);
    p[n++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
    out = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 1);
    for (int i = 0; i < len; i++) {  // r2 = *(r0 + (r2 & 0x38) + line): the value is zeroes
      p[n++] = I(BPF_ALU64 | BPF_AND | BPF_K, 2, 0, 0, 0x38);
      p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 3, 0, 0, 0);
      p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_X, 3, 2, 0, 0);
      p[n++] = I(BPF_LDX | BPF_DW | BPF_MEM, 2, 3, kind == 4 ? (i % 32) * 64 : 0, 0);
      for (int k = 0; kind == 4 && k < 12; k++) p[n++] = I(BPF_ALU64 | BPF_XOR | BPF_K, 4, 0, 0, k * 77 + i);
    }
  }
  int end = n;
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2);
  p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  if (out >= 0) p[out].off = end - out - 1;
  return load_xdp(p, n);
}
struct job { int prog, cpu; double ns; pthread_barrier_t* b; };
static void* both_one(void* a) { struct job* j = a; pin_to_cpu(j->cpu); pthread_barrier_wait(j->b); j->ns = run(j->prog); return 0; }
static double both(int prog) {
  pthread_barrier_t b; pthread_barrier_init(&b, 0, 2);
  struct job j[2] = {{prog, 0, 0, &b}, {prog, 1, 0, &b}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, both_one, &j[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], 0);
  return (j[0].ns + j[1].ns) / 2;
}
int main(int argc, char** argv) {
  calls = argc > 1 ? atoi(argv[1]) : 20000;
  int rounds = argc > 2 ? atoi(argv[2]) : 9;
  ifindex = argc > 3 ? atoi(argv[3]) : 0;
  pin_to_cpu(0);
  int map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "two_cpu", 4, 64, 1, NULL);
  int big = bpf_map_create(BPF_MAP_TYPE_ARRAY, "two_cpu_big", 4, 2048, 1, NULL);
  int trivial = load(0, 0, 0);
  struct { const char* name; int prog; } v[] = {
      {"60 dependent multiplies", load(1, 0, 60)},
      {"40 dependent L1 loads  ", load(2, map, 40)},
      {"ingress_ifindex read   ", load(3, 0, 0)},
      {"32 lines, 2 KiB of code", load(4, big, 40)},
      {"bpf_redirect, a helper ", load(5, 0, 0)},
  };
  const int nv = sizeof v / sizeof v[0];
  double one[nv][64], two[nv][64];
  for (int r = 0; r < rounds; r++) {
    pin_to_cpu(0);
    double base1 = run(trivial);
    double base2 = both(trivial);
    for (int k = 0; k < nv; k++) {
      pin_to_cpu(0);
      one[k][r] = run(v[k].prog) - base1;
      two[k][r] = both(v[k].prog) - base2;
    }
  }
  for (int k = 0; k < nv; k++) {
    double ratio[64];
    for (int r = 0; r < rounds; r++) ratio[r] = two[k][r] / one[k][r];
    qsort(one[k], rounds, sizeof(double), cmp);
    qsort(two[k], rounds, sizeof(double), cmp);
    qsort(ratio, rounds, sizeof(double), cmp);
    printf("%s: alone %5.1f ns, both CPUs %5.1f ns (net of trivial): two / one %.2f\n", v[k].name,
           one[k][rounds / 2], two[k][rounds / 2], ratio[rounds / 2]);
  }
  return 0;
}
