// Prints each loaded XDP program's name and the instructions the verifier
// processed to accept it (the limit is 1,000,000), so that a change's
// margin is known before it fails to load. Run while the programs are
// loaded (a bench, `lb-profile`, or the agent).
// usage (root): gcc -O2 -o verified_insns tests/probes/verified_insns.c && ./verified_insns
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *attr) { return syscall(__NR_bpf, cmd, attr, sizeof(*attr)); }

int main(void) {
    unsigned int id = 0;
    for (;;) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof(attr));
        attr.start_id = id;
        if (bpf(BPF_PROG_GET_NEXT_ID, &attr) != 0) break;
        id = attr.next_id;
        memset(&attr, 0, sizeof(attr));
        attr.prog_id = id;
        int fd = bpf(BPF_PROG_GET_FD_BY_ID, &attr);
        if (fd < 0) continue;
        struct bpf_prog_info info;
        memset(&info, 0, sizeof(info));
        memset(&attr, 0, sizeof(attr));
        attr.info.bpf_fd = fd;
        attr.info.info_len = sizeof(info);
        attr.info.info = (unsigned long)&info;
        if (bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) == 0 && info.type == BPF_PROG_TYPE_XDP)
            printf("%u %s %u\n", id, info.name, info.verified_insns);
        close(fd);
    }
    return 0;
}
