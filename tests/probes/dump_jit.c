// Writes the machine code the kernel's JIT made of a loaded BPF program (the
// newest one of that name), and prints where each of its functions (the
// program, then its BPF-to-BPF callees) sits in the kernel and how long it
// is: "func INDEX KERNEL_ADDRESS LENGTH". `profile.sh` maps perf's samples
// onto it. (No bpftool on these machines: BPF_OBJ_GET_INFO_BY_FD directly.)
// Build: gcc -O2 -o dump_jit dump_jit.c   Run (root): ./dump_jit lb lb.jit
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr* attr) { return syscall(SYS_bpf, cmd, attr, sizeof *attr); }

static int info_of(int fd, struct bpf_prog_info* info) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.info.bpf_fd = fd;
  attr.info.info_len = sizeof *info;
  attr.info.info = (unsigned long)info;
  return bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
}

int main(int argc, char** argv) {
  if (argc != 3) { fprintf(stderr, "usage: dump_jit PROGRAM_NAME OUT_FILE\n"); return 2; }
  int found = -1;
  for (unsigned id = 0;;) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.start_id = id;
    if (bpf(BPF_PROG_GET_NEXT_ID, &attr)) break;
    id = attr.next_id;
    memset(&attr, 0, sizeof attr);
    attr.prog_id = id;
    int fd = bpf(BPF_PROG_GET_FD_BY_ID, &attr);
    if (fd < 0) continue;
    struct bpf_prog_info info;
    memset(&info, 0, sizeof info);
    if (info_of(fd, &info) == 0 && strcmp(info.name, argv[1]) == 0) {
      if (found >= 0) close(found);
      found = fd;  // ids grow: the last one is the newest
    } else {
      close(fd);
    }
  }
  if (found < 0) { fprintf(stderr, "dump_jit: no loaded program named %s\n", argv[1]); return 1; }
  struct bpf_prog_info info;
  memset(&info, 0, sizeof info);
  if (info_of(found, &info)) { perror("dump_jit: program info"); return 1; }
  unsigned len = info.jited_prog_len, funcs = info.nr_jited_ksyms;
  unsigned char* image = malloc(len);
  unsigned long long* ksyms = calloc(funcs, sizeof *ksyms);
  unsigned* lens = calloc(funcs, sizeof *lens);
  memset(&info, 0, sizeof info);
  info.jited_prog_len = len;
  info.jited_prog_insns = (unsigned long)image;
  info.nr_jited_ksyms = funcs;
  info.jited_ksyms = (unsigned long)ksyms;
  info.nr_jited_func_lens = funcs;
  info.jited_func_lens = (unsigned long)lens;
  if (info_of(found, &info)) { perror("dump_jit: JIT image (root, and bpf_jit_harden 0?)"); return 1; }
  FILE* out = fopen(argv[2], "wb");
  if (!out || fwrite(image, 1, len, out) != len || fclose(out)) { perror(argv[2]); return 1; }
  for (unsigned i = 0; i < funcs; i++) printf("func %u %llx %u\n", i, ksyms[i], lens[i]);
  return 0;
}
