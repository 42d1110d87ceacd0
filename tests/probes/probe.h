// What the BPF probes here share: building a program by hand, timing one
// test run per frame as bench section 1 does, and the medians and random
// indexes of their rounds. Each probe includes it: `gcc -O2 -o P P.c -lbpf`
// from this folder.
#ifndef LB_PROBE_H
#define LB_PROBE_H
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// One BPF instruction.
#define I(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

// For qsort: doubles in ascending order (the rounds' median).
static inline int cmp(const void* a, const void* b) {
  double x = *(double*)a, y = *(double*)b;
  return x < y ? -1 : x > y;
}

// A xorshift64 stream: the same indexes in every run of a probe.
static uint64_t rnd_state = 0x2545f4914f6cdd1dull;
static inline uint32_t rnd(void) {
  rnd_state ^= rnd_state << 13; rnd_state ^= rnd_state >> 7; rnd_state ^= rnd_state << 17;
  return (uint32_t)rnd_state;
}

// Mean kernel-timed ns of one test run per frame, a 64-byte frame carrying
// a[i] at offset 14 and b[i] at 18 (the indexes the program reads).
static inline double run_ab(int prog, const uint32_t* a, const uint32_t* b, int n) {
  unsigned char frame[64] = {0};
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    memcpy(frame + 14, &a[i], 4); memcpy(frame + 18, &b[i], 4);
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof frame, .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &o)) { perror("run"); exit(1); }
    total += o.duration;
  }
  return (double)total / n;
}
#endif
