/*
 * pr-ioctl: issue Linux block-layer persistent-reservation ioctls (<linux/pr.h>)
 * on a block device. Built statically into the sharedisk test guest's initramfs.
 *
 * Usage:
 *   pr-ioctl DEV register OLDKEY NEWKEY
 *   pr-ioctl DEV register-ignore NEWKEY          (PR_FL_IGNORE_KEY: register and ignore existing key)
 *   pr-ioctl DEV reserve KEY TYPE
 *   pr-ioctl DEV release KEY TYPE
 *   pr-ioctl DEV preempt OLDKEY NEWKEY TYPE
 *   pr-ioctl DEV preempt-abort OLDKEY NEWKEY TYPE
 *   pr-ioctl DEV clear KEY
 *
 * KEY: decimal or 0x-hex 64-bit value.  TYPE: enum pr_type 1..6
 *   1 write-exclusive, 2 exclusive-access, 3 write-exclusive-reg-only,
 *   4 exclusive-access-reg-only, 5 write-exclusive-all-regs, 6 exclusive-access-all-regs
 *   (the names, e.g. "we", "ea", "we-ro", "ea-ro", "we-ar", "ea-ar", are accepted too).
 *
 * Output: one line "pr-ioctl: OP ok" or a failure description.
 * Exit status:
 *   0   success
 *   24  SCSI status RESERVATION CONFLICT (0x18), same code sg_persist uses
 *   98  other positive SCSI result (status/host byte printed)
 *   1   ioctl failed with an errno (printed, e.g. ENOTTY for a device without pr_ops)
 *   2   open failed
 *   64  usage error
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/pr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static const char *prog = "pr-ioctl";

static void usage(void)
{
    fprintf(stderr,
            "usage: %s DEV register OLDKEY NEWKEY\n"
            "       %s DEV register-ignore NEWKEY\n"
            "       %s DEV reserve KEY TYPE\n"
            "       %s DEV release KEY TYPE\n"
            "       %s DEV preempt OLDKEY NEWKEY TYPE\n"
            "       %s DEV preempt-abort OLDKEY NEWKEY TYPE\n"
            "       %s DEV clear KEY\n"
            "KEY: decimal or 0x-hex; TYPE: 1..6 (linux/pr.h enum pr_type)\n",
            prog, prog, prog, prog, prog, prog, prog);
    exit(64);
}

static uint64_t parse_key(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end != '\0' || s[0] == '-') {
        fprintf(stderr, "%s: bad key '%s'\n", prog, s);
        exit(64);
    }
    return (uint64_t)v;
}

static uint32_t parse_type(const char *s)
{
    static const char *names[] = {NULL, "we", "ea", "we-ro", "ea-ro", "we-ar", "ea-ar"};
    for (int i = 1; i <= 6; i++)
        if (strcmp(s, names[i]) == 0)
            return (uint32_t)i;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || end == s || *end != '\0' || v < 1 || v > 6) {
        fprintf(stderr, "%s: bad type '%s' (want 1..6)\n", prog, s);
        exit(64);
    }
    return (uint32_t)v;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    const char *dev = argv[1];
    const char *op = argv[2];
    int nargs = argc - 3;
    char **a = argv + 3;

    unsigned long req;
    void *arg;
    struct pr_registration reg;
    struct pr_reservation rsv;
    struct pr_preempt pre;
    struct pr_clear clr;
    memset(&reg, 0, sizeof reg);
    memset(&rsv, 0, sizeof rsv);
    memset(&pre, 0, sizeof pre);
    memset(&clr, 0, sizeof clr);

    if (strcmp(op, "register") == 0) {
        if (nargs != 2)
            usage();
        reg.old_key = parse_key(a[0]);
        reg.new_key = parse_key(a[1]);
        req = IOC_PR_REGISTER;
        arg = &reg;
    } else if (strcmp(op, "register-ignore") == 0) {
        if (nargs != 1)
            usage();
        reg.new_key = parse_key(a[0]);
        reg.flags = PR_FL_IGNORE_KEY;
        req = IOC_PR_REGISTER;
        arg = &reg;
    } else if (strcmp(op, "reserve") == 0 || strcmp(op, "release") == 0) {
        if (nargs != 2)
            usage();
        rsv.key = parse_key(a[0]);
        rsv.type = parse_type(a[1]);
        req = op[2] == 's' ? IOC_PR_RESERVE : IOC_PR_RELEASE;
        arg = &rsv;
    } else if (strcmp(op, "preempt") == 0 || strcmp(op, "preempt-abort") == 0) {
        if (nargs != 3)
            usage();
        pre.old_key = parse_key(a[0]);
        pre.new_key = parse_key(a[1]);
        pre.type = parse_type(a[2]);
        req = strcmp(op, "preempt") == 0 ? IOC_PR_PREEMPT : IOC_PR_PREEMPT_ABORT;
        arg = &pre;
    } else if (strcmp(op, "clear") == 0) {
        if (nargs != 1)
            usage();
        clr.key = parse_key(a[0]);
        req = IOC_PR_CLEAR;
        arg = &clr;
    } else {
        usage();
        return 64;
    }

    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        printf("pr-ioctl: open %s: %s (errno %d)\n", dev, strerror(e), e);
        return 2;
    }
    int ret = ioctl(fd, req, arg);
    int e = errno;
    close(fd);
    if (ret == 0) {
        printf("pr-ioctl: %s ok\n", op);
        return 0;
    }
    if (ret < 0) {
        printf("pr-ioctl: %s failed: %s (errno %d)\n", op, strerror(e), e);
        return 1;
    }
    /* ret > 0: SCSI result from the sd driver (status byte | host byte << 16 ...). */
    unsigned status = (unsigned)ret & 0xff;
    unsigned host = ((unsigned)ret >> 16) & 0xff;
    if (status == 0x18) {
        printf("pr-ioctl: %s failed: RESERVATION CONFLICT (scsi result 0x%x)\n", op, ret);
        return 24;
    }
    printf("pr-ioctl: %s failed: scsi result 0x%x (status 0x%02x host 0x%02x)%s\n", op, ret,
           status, host, status == 0x02 ? " CHECK CONDITION" : "");
    return 98;
}
