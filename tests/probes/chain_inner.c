// A flow lookup's two dependent reads (a tag word in an 8 MiB array, then a
// 32-byte slot of a 128 MiB table), with the slots in one flat BPF array
// (vmalloc'd, 4 KiB pages) or in 8192 inner arrays of 16 KiB behind an array
// of maps (kmalloc'd, the kernel's direct map). Read (a lookup) or written
// (a new flow's slot); the slot's index taken from the tag's value (the CPU
// must wait) or chosen by a branch on it (the CPU predicts the branch and
// reads the slot at once, as the datapath's lookup lets it). Timed as
// chain_cost.c: median over rounds of 20000 test runs at random indexes,
// net of the same program at fixed ones.
// Build: gcc -O2 -o chain_inner chain_inner.c -lbpf   Run (root): ./chain_inner [CALLS] [ROUNDS]
#include "probe.h"
#define SLOTS 4194304u
#define INNER 512u
#define TAGLINES 131072u
static int load(int tags, int slots, int inner, int store, int branch) {
  struct bpf_insn p[64]; int n = 0, outs[8], no = 0;
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 0, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0);
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 2, 0, 0);
  p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 22);
  outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JGT | BPF_X, 4, 3, 0, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 7, 2, 14, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 8, 2, 18, 0);
  p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 7, -4, 0);
  lookup_insns(p, &n, tags, -4);
  outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
  p[n++] = I(BPF_LDX | BPF_DW | BPF_MEM, 9, 0, 0, 0);            // the tag word (0)
  if (branch) { outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JNE | BPF_K, 9, 0, 0, 0); }  // a branch on it
  else p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_X, 8, 9, 0, 0);      // the slot's index depends on it
  if (inner) {
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 6, 8, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_RSH | BPF_K, 6, 0, 0, 9);
    p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 6, -8, 0);
    p[n++] = I(BPF_ALU64 | BPF_AND | BPF_K, 8, 0, 0, INNER - 1);
    p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 8, -12, 0);
    lookup_insns(p, &n, slots, -8);                              // the inner array
    outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 1, 0, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
    p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -12);
    p[n++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
  } else {
    p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 8, -8, 0);
    lookup_insns(p, &n, slots, -8);
  }
  outs[no++] = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
  if (store) p[n++] = I(BPF_STX | BPF_DW | BPF_MEM, 0, 9, 8, 0);
  else p[n++] = I(BPF_LDX | BPF_DW | BPF_MEM, 0, 0, 8, 0);
  int o = n;
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2);
  p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  for (int k = 0; k < no; k++) p[outs[k]].off = o - outs[k] - 1;
  return load_xdp(p, n);
}
int main(int argc, char** argv) {
  pin_to_cpu(0);
  int calls = argc > 1 ? atoi(argv[1]) : 20000, rounds = argc > 2 ? atoi(argv[2]) : 7;
  int tags = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tags", 4, 64, TAGLINES, NULL);
  int flat = bpf_map_create(BPF_MAP_TYPE_ARRAY, "slots", 4, 32, SLOTS, NULL);
  int tmpl = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tmpl", 4, 32, INNER, NULL);
  LIBBPF_OPTS(bpf_map_create_opts, mo, .inner_map_fd = tmpl);
  int outer = bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "outer", 4, 4, SLOTS / INNER, &mo);
  if (tags < 0 || flat < 0 || outer < 0) { perror("map"); return 1; }
  for (uint32_t k = 0; k < SLOTS / INNER; k++) {
    int m = bpf_map_create(BPF_MAP_TYPE_ARRAY, "in", 4, 32, INNER, NULL);
    if (m < 0 || bpf_map_update_elem(outer, &k, &m, 0)) { perror("inner"); return 1; }
    close(m);
  }
  struct { const char* name; int prog; } v[] = {
      {"flat : tag, slot read (data dep)", load(tags, flat, 0, 0, 0)},
      {"inner: tag, slot read (data dep)", load(tags, outer, 1, 0, 0)},
      {"flat : tag, slot read (branch)  ", load(tags, flat, 0, 0, 1)},
      {"inner: tag, slot read (branch)  ", load(tags, outer, 1, 0, 1)},
      {"flat : tag, slot store (branch) ", load(tags, flat, 0, 1, 1)},
      {"inner: tag, slot store (branch) ", load(tags, outer, 1, 1, 1)},
  };
  int nv = sizeof v / sizeof v[0];
  uint32_t *a = malloc(calls * 4), *b = malloc(calls * 4), *ha = malloc(calls * 4), *hb = malloc(calls * 4);
  for (int i = 0; i < calls; i++) { ha[i] = 7; hb[i] = 9; }
  double res[8][64], hots[8][64];
  for (int r = 0; r < rounds; r++) {
    for (int k = 0; k < nv; k++) {
      for (int i = 0; i < calls; i++) { a[i] = rnd() % TAGLINES; b[i] = rnd() % SLOTS; }
      double hot = run_ab(v[k].prog, ha, hb, calls);
      res[k][r] = run_ab(v[k].prog, a, b, calls) - hot;
      hots[k][r] = hot;
    }
  }
  for (int k = 0; k < nv; k++) {
    qsort(res[k], rounds, sizeof(double), cmp); qsort(hots[k], rounds, sizeof(double), cmp);
    printf("%s: %4.0f ns over hot (rounds %4.0f..%4.0f), hot %3.0f\n", v[k].name, res[k][rounds / 2], res[k][0], res[k][rounds - 1], hots[k][rounds / 2]);
  }
  return 0;
}
