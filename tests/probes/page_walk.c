// What a page walk adds to a random read on this machine: a chain of
// dependent loads at random lines of a 256 MiB buffer (the flow table's size
// in bench section 1), mapped in 4 KiB pages and then in 2 MiB pages
// (transparent huge pages). The kernel maps a BPF map's memory with vmalloc,
// in 4 KiB pages, so the flow table pays the first figure (chain_cost.c
// measures 290 ns for one line of a 256 MiB BPF array); the difference is
// the share of a lookup among a million flows that no layout of ours can
// save (docs/performance.md, section 1).
// Build: gcc -O2 -o page_walk page_walk.c   Run: ./page_walk [LOADS]
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

// ns per load of a chain through every line of the buffer in random order.
static double chain(int huge, int loads) {
  const size_t size = 256ul << 20, lines = size / 64;
  char* p = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(1); }
  madvise(p, size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  uint32_t* order = malloc(lines * sizeof *order);
  for (size_t i = 0; i < lines; i++) order[i] = i;
  uint64_t x = 0x2545f4914f6cdd1dull;
  for (size_t i = lines - 1; i > 0; i--) {  // Fisher-Yates, xorshift
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    size_t j = x % (i + 1);
    uint32_t t = order[i]; order[i] = order[j]; order[j] = t;
  }
  for (size_t i = 0; i < lines; i++) *(uint64_t*)(p + (size_t)order[i] * 64) = (size_t)order[(i + 1) % lines] * 64;
  free(order);
  size_t at = 0;
  double start = now_ns();
  for (int i = 0; i < loads; i++) at = *(volatile uint64_t*)(p + at);
  double ns = (now_ns() - start) / loads;
  munmap(p, size);
  return ns;
}

int main(int argc, char** argv) {
  cpu_set_t set;
  CPU_ZERO(&set); CPU_SET(0, &set); sched_setaffinity(0, sizeof set, &set);
  int loads = argc > 1 ? atoi(argv[1]) : 2000000;
  for (int round = 0; round < 3; round++)
    printf("4 KiB pages %.0f ns a load, 2 MiB pages %.0f ns\n", chain(0, loads), chain(1, loads));
  return 0;
}
