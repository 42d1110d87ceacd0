// The two dependent reads of a flow lookup, as two layouts would make them
// (docs/performance.md, section 1): today's, a tag word in its own 8 MiB
// array then a slot in a 256 MiB one; and the tag line in the slot's own
// 4 KiB page (one page walk for both). Each with the slot's index taken from
// the tag's value (the CPU must wait), or chosen by a branch on it (the CPU
// predicts the branch and reads the slot at once, as it does for a flow in
// the lane it guesses), and with the slot written instead of read (a new
// flow). Against one random line of the 256 MiB array alone. Each figure is
// the median over rounds of 20000 test runs at random indexes, net of the
// same program at fixed ones, timed like bench section 1.
// Build: gcc -O2 -o chain_cost chain_cost.c -lbpf   Run (root): ./chain_cost [CALLS] [ROUNDS]
#include "probe.h"
enum { DATA, CTRL, STORE, ONE };
static int load(int m1, int m2, int mode) {
  struct bpf_insn p[64]; int n = 0;
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 2, 1, 0, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 3, 1, 4, 0);
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 4, 2, 0, 0);
  p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 4, 0, 0, 22);
  int jout1 = n; p[n++] = I(BPF_JMP | BPF_JGT | BPF_X, 4, 3, 0, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 7, 2, 14, 0);
  p[n++] = I(BPF_LDX | BPF_W | BPF_MEM, 8, 2, 18, 0);
  p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 7, -4, 0);
  lookup_insns(p, &n, m1, -4);
  int jout2 = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
  p[n++] = I(BPF_LDX | BPF_DW | BPF_MEM, 9, 0, 0, 0);           // the tag word
  int jout3 = -1;
  if (mode == ONE) goto out;
  if (mode == DATA || mode == STORE) p[n++] = I(BPF_ALU64 | BPF_ADD | BPF_X, 8, 9, 0, 0);  // index depends on it
  else { jout3 = n; p[n++] = I(BPF_JMP | BPF_JNE | BPF_K, 9, 0, 0, 0); }  // branch on it
  p[n++] = I(BPF_STX | BPF_W | BPF_MEM, 10, 8, -8, 0);
  lookup_insns(p, &n, m2, -8);
  int jout4 = n; p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0, 0);
  if (mode == STORE) p[n++] = I(BPF_STX | BPF_DW | BPF_MEM, 0, 9, 0, 0);
  else p[n++] = I(BPF_LDX | BPF_DW | BPF_MEM, 0, 0, 0, 0);
out:;
  int o = n;
  p[n++] = I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 2);
  p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  p[jout1].off = o - jout1 - 1; p[jout2].off = o - jout2 - 1;
  if (jout3 >= 0) p[jout3].off = o - jout3 - 1;
  if (mode != ONE) p[jout4].off = o - jout4 - 1;
  return load_xdp(p, n);
}
int main(int argc, char** argv) {
  pin_to_cpu(0);
  const uint32_t SLOTS = 4194304, TAGLINES = 131072;
  int calls = argc > 1 ? atoi(argv[1]) : 20000, rounds = argc > 2 ? atoi(argv[2]) : 7;
  int tags = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tags", 4, 64, TAGLINES, NULL);
  int slots = bpf_map_create(BPF_MAP_TYPE_ARRAY, "slots", 4, 64, SLOTS, NULL);
  if (tags < 0 || slots < 0) { perror("map"); return 1; }
  struct { const char* name; int prog; int layout; } v[] = {
      {"one line of 256 MiB           ", load(slots, slots, ONE), 2},
      {"today: tags 8M, slot (data dep)", load(tags, slots, DATA), 0},
      {"today: tags 8M, slot (branch)  ", load(tags, slots, CTRL), 0},
      {"today: tags 8M, slot store     ", load(tags, slots, STORE), 0},
      {"in page: tag line, slot (data) ", load(slots, slots, DATA), 1},
      {"in page: tag line, slot(branch)", load(slots, slots, CTRL), 1},
      {"in page: tag line, slot store  ", load(slots, slots, STORE), 1},
  };
  int nv = sizeof v / sizeof v[0];
  uint32_t *a = malloc(calls * 4), *b = malloc(calls * 4), *ha = malloc(calls * 4), *hb = malloc(calls * 4);
  for (int i = 0; i < calls; i++) { ha[i] = 7; hb[i] = 9; }
  double res[16][64];
  for (int r = 0; r < rounds; r++) {
    for (int k = 0; k < nv; k++) {
      for (int i = 0; i < calls; i++) {
        uint32_t s = rnd() % SLOTS;
        if (v[k].layout == 0) { a[i] = rnd() % TAGLINES; b[i] = s; }
        else if (v[k].layout == 1) { uint32_t page = s / 64; a[i] = page * 64; b[i] = page * 64 + 2 + rnd() % 60; }
        else { a[i] = s; b[i] = s; }
      }
      double hot = run_ab(v[k].prog, ha, hb, calls);
      double cold = run_ab(v[k].prog, a, b, calls);
      res[k][r] = cold - hot;
    }
  }
  for (int k = 0; k < nv; k++) {
    qsort(res[k], rounds, sizeof(double), cmp);
    printf("%s: %4.0f ns over hot (rounds %4.0f..%4.0f)\n", v[k].name, res[k][rounds / 2], res[k][0], res[k][rounds - 1]);
  }
  return 0;
}
