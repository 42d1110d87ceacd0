// What the BPF probes here share: building a program by hand (its map
// lookups) and loading it, pinning the thread to a CPU, timing one test run
// per frame as bench section 1 does, and the medians and random indexes of
// their rounds. Each probe includes it: `gcc -O2 -o P P.c -lbpf`
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

// The calling thread, on `cpu` alone.
static inline void pin_to_cpu(int cpu) {
  cpu_set_t set; CPU_ZERO(&set); CPU_SET(cpu, &set); sched_setaffinity(0, sizeof set, &set);
}

// Loads `n` instructions as an XDP program; exits with the verifier's log
// if it refuses them.
static inline int load_xdp(const struct bpf_insn* p, int n) {
  static char log[1 << 20];
  LIBBPF_OPTS(bpf_prog_load_opts, lo, .log_buf = log, .log_size = sizeof log, .log_level = 1);
  int prog = bpf_prog_load(BPF_PROG_TYPE_XDP, "probe", "GPL", p, n, &lo);
  if (prog < 0) { perror("load"); fputs(log, stderr); exit(1); }
  return prog;
}

// Appends at p[*n] a lookup in map `fd` of the key on the stack at
// r10 + `key_off` (r0: the element, or 0).
static inline void lookup_insns(struct bpf_insn* p, int* n, int fd, int key_off) {
  p[(*n)++] = I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, fd);
  p[(*n)++] = I(0, 0, 0, 0, 0);
  p[(*n)++] = I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0);
  p[(*n)++] = I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, key_off);
  p[(*n)++] = I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
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
