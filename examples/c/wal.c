/*
 * wal.c: a small write-ahead log over nvme-dio's C ABI.
 *
 * Appends records, one per logical block, with Force Unit Access writes, keeping up to
 * --depth writes in flight. A record is acknowledged once it AND every record before it are
 * durable (acks go out in log order, as a WAL needs), then the log is read back and checked.
 *
 *   wal [--device DEV] [--records N] [--depth Q] [--start-lba L]
 *       [--interrupt]              interrupt mode: nvd_wait sleeps on the MSI-X vector
 *       [--crash-after N]          abort() right after the Nth acknowledgement
 *       [--recover [--expect N]]   only read back and check; fail if fewer than N records
 *
 * DEV is "emu:ram" (default: the emulated controller, RAM-backed; its data dies with the
 * process) or a PCI address bound to vfio-pci ("0000:00:04.0").
 *
 * On-device layout, from --start-lba: one header block (magic, epoch, checksum), then record
 * i at block start+1+i: magic, epoch, seq, payload length, CRC-32 of everything else, then
 * the payload, a deterministic function of (epoch, seq). The epoch is new on every fresh run,
 * so records left by an earlier run never pass as this run's.
 *
 * Output lines (for scripts): "EPOCH e", "ACKED n", "VERIFIED n", "RECOVERED n".
 * Exit status: 0 ok, 1 verification failed, 2 usage, 3 device or I/O error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nvme_dio.h"

#define HDR_MAGIC 0x4844564eu /* "NVDH" */
#define REC_MAGIC 0x4344564eu /* "NVDC" */
#define REC_HEADER 28         /* magic 4, epoch 8, seq 8, len 4, crc 4 */
#define MAX_DEPTH 64

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int die(const char *what, int rc) {
    fprintf(stderr, "wal: %s: %s (%s)\n", what, nvd_last_error(), nvd_strerror(rc));
    exit(3);
}

/* Record `seq` of `epoch` in a block of `bs` bytes. */
static void make_record(uint8_t *blk, uint32_t bs, uint64_t epoch, uint64_t seq) {
    memset(blk, 0, bs);
    uint32_t len = 1 + (uint32_t)((seq * 2654435761u) % (bs - REC_HEADER));
    put32(blk, REC_MAGIC);
    put64(blk + 4, epoch);
    put64(blk + 12, seq);
    put32(blk + 20, len);
    for (uint32_t i = 0; i < len; i++) blk[REC_HEADER + i] = (uint8_t)(seq * 31 + i * 7 + epoch);
    uint32_t crc = crc32(blk, 24) ^ crc32(blk + REC_HEADER, len);
    put32(blk + 24, crc);
}

/* 1 if the block holds record `seq` of `epoch`, intact. */
static int check_record(const uint8_t *blk, uint32_t bs, uint64_t epoch, uint64_t seq) {
    if (get32(blk) != REC_MAGIC || get64(blk + 4) != epoch || get64(blk + 12) != seq) return 0;
    uint32_t len = get32(blk + 20);
    if (len == 0 || len > bs - REC_HEADER) return 0;
    if ((crc32(blk, 24) ^ crc32(blk + REC_HEADER, len)) != get32(blk + 24)) return 0;
    for (uint32_t i = 0; i < len; i++)
        if (blk[REC_HEADER + i] != (uint8_t)(seq * 31 + i * 7 + epoch)) return 0;
    return 1;
}

struct run;

struct slot {
    struct run *run;
    nvd_buf *buf;
    uint64_t seq;
    int busy;
};

struct run {
    nvd_qpair *qp;
    uint32_t nsid, bs;
    uint64_t start;
    int inflight;
    int failed; /* first error status seen, or 0 */
    uint8_t *done;
    struct slot slots[MAX_DEPTH];
};

static void on_write(void *ctx, int32_t status, uint16_t nvme_status) {
    struct slot *s = ctx;
    if (status != NVD_OK) {
        fprintf(stderr, "wal: write of record %" PRIu64 " failed: %s (NVMe status %#x)\n", s->seq,
                nvd_last_error(), nvme_status);
        if (!s->run->failed) s->run->failed = status;
    } else {
        s->run->done[s->seq] = 1;
    }
    s->busy = 0;
    s->run->inflight--;
}

static void on_read(void *ctx, int32_t status, uint16_t nvme_status) {
    struct slot *s = ctx;
    (void)nvme_status;
    if (status != NVD_OK && !s->run->failed) s->run->failed = status;
    s->busy = 0;
    s->run->inflight--;
}

/* Waits until nothing is in flight. */
static void drain(struct run *r) {
    while (r->inflight > 0) {
        int n = nvd_wait(r->qp, 1000);
        if (n < 0) die("nvd_wait", n);
    }
}

/* Reads records 0.. in batches of `depth` and counts the intact prefix. */
static uint64_t verify(struct run *r, uint64_t epoch, uint64_t limit, int depth) {
    uint8_t *blk = malloc(r->bs);
    uint64_t good = 0;
    for (;;) {
        int batch = 0;
        for (; batch < depth && good + batch < limit; batch++) {
            struct slot *s = &r->slots[batch];
            s->seq = good + batch;
            s->busy = 1;
            const nvd_buf *one[1] = {s->buf};
            int rc = nvd_readv(r->qp, r->nsid, r->start + 1 + s->seq, one, 1, on_read, s);
            if (rc != NVD_OK) die("nvd_readv", rc);
            r->inflight++;
        }
        if (batch == 0) break;
        drain(r);
        if (r->failed) die("read back", r->failed);
        for (int i = 0; i < batch; i++) {
            if (nvd_buf_read(r->slots[i].buf, 0, blk, r->bs) != NVD_OK) die("nvd_buf_read", -1);
            if (!check_record(blk, r->bs, epoch, good)) {
                free(blk);
                return good;
            }
            good++;
        }
    }
    free(blk);
    return good;
}

static void usage(void) {
    fprintf(stderr, "usage: wal [--device DEV] [--records N] [--depth Q] [--start-lba L] "
                    "[--interrupt] [--crash-after N] [--recover [--expect N]]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *device = "emu:ram";
    uint64_t records = 1000, crash_after = 0, expect = 0, start = 0;
    int depth = 8, recover = 0, interrupt = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--recover")) { recover = 1; continue; }
        if (!strcmp(a, "--interrupt")) { interrupt = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--records")) records = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--depth")) depth = atoi(v);
        else if (!strcmp(a, "--start-lba")) start = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--crash-after")) crash_after = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--expect")) expect = strtoull(v, NULL, 0);
        else usage();
        i++;
    }
    if (depth < 1 || depth > MAX_DEPTH) usage();
    crc_init();

    nvd_ctrl *ctrl;
    int rc = nvd_open(device, &ctrl);
    if (rc != NVD_OK) die("nvd_open", rc);
    nvd_ns_info ns = { .size = sizeof ns };
    if ((rc = nvd_ns_info_get(ctrl, 0, &ns)) != NVD_OK) die("nvd_ns_info_get", rc);
    uint64_t room = ns.blocks > start + 1 ? ns.blocks - start - 1 : 0;
    if (records > room) records = room;
    struct run r = {.nsid = ns.nsid, .bs = ns.block_size, .start = start};
    rc = nvd_qpair_create(ctrl, 0, interrupt ? NVD_QPAIR_INTERRUPT : 0, &r.qp);
    if (rc != NVD_OK) die("nvd_qpair_create", rc);
    for (int i = 0; i < depth; i++) {
        r.slots[i].run = &r;
        if ((rc = nvd_buf_alloc(ctrl, r.bs, &r.slots[i].buf)) != NVD_OK) die("nvd_buf_alloc", rc);
    }
    uint8_t *blk = malloc(r.bs);
    int status = 0;

    if (recover) {
        /* The header block names the epoch of the log on the device. */
        const nvd_buf *one[1] = {r.slots[0].buf};
        r.slots[0].busy = 1;
        if ((rc = nvd_readv(r.qp, r.nsid, start, one, 1, on_read, &r.slots[0])) != NVD_OK)
            die("nvd_readv", rc);
        r.inflight++;
        drain(&r);
        nvd_buf_read(r.slots[0].buf, 0, blk, r.bs);
        if (get32(blk) != HDR_MAGIC || crc32(blk, 12) != get32(blk + 12)) {
            fprintf(stderr, "wal: no log header at block %" PRIu64 "\n", start);
            printf("RECOVERED 0\n");
            status = expect > 0;
        } else {
            uint64_t epoch = get64(blk + 4);
            uint64_t n = verify(&r, epoch, room, depth);
            printf("EPOCH %" PRIu64 "\nRECOVERED %" PRIu64 "\n", epoch, n);
            if (n < expect) {
                fprintf(stderr, "wal: only %" PRIu64 " intact records, %" PRIu64 " were acknowledged\n",
                        n, expect);
                status = 1;
            }
        }
    } else {
        uint64_t epoch = ((uint64_t)time(NULL) << 20) ^ ((uint64_t)getpid() << 1) ^ 1;
        r.done = calloc(records ? records : 1, 1);
        /* The header first, durable, so recovery knows this run's epoch. */
        memset(blk, 0, r.bs);
        put32(blk, HDR_MAGIC);
        put64(blk + 4, epoch);
        put32(blk + 12, crc32(blk, 12));
        nvd_buf_write(r.slots[0].buf, 0, blk, r.bs);
        const nvd_buf *one[1] = {r.slots[0].buf};
        r.slots[0].busy = 1;
        if ((rc = nvd_writev(r.qp, r.nsid, start, one, 1, NVD_WRITE_FUA, on_read, &r.slots[0])) != NVD_OK)
            die("nvd_writev", rc);
        r.inflight++;
        drain(&r);
        if (r.failed) die("header write", r.failed);
        printf("EPOCH %" PRIu64 "\n", epoch);
        fflush(stdout);

        uint64_t next = 0, acked = 0;
        while (acked < records) {
            for (int i = 0; i < depth && next < records; i++) {
                struct slot *s = &r.slots[i];
                if (s->busy) continue;
                make_record(blk, r.bs, epoch, next);
                if ((rc = nvd_buf_write(s->buf, 0, blk, r.bs)) != NVD_OK) die("nvd_buf_write", rc);
                const nvd_buf *b[1] = {s->buf};
                s->seq = next;
                rc = nvd_writev(r.qp, r.nsid, start + 1 + next, b, 1, NVD_WRITE_FUA, on_write, s);
                if (rc == NVD_ERR_QUEUE_FULL) break;
                if (rc != NVD_OK) die("nvd_writev", rc);
                s->busy = 1;
                r.inflight++;
                next++;
            }
            int n = nvd_wait(r.qp, 1000);
            if (n < 0) die("nvd_wait", n);
            if (r.failed) die("write", r.failed);
            while (acked < next && r.done[acked]) {
                acked++;
                if (crash_after && acked == crash_after) {
                    printf("ACKED %" PRIu64 "\n", acked);
                    fflush(stdout);
                    abort(); /* the simulated crash: writes still in flight are cut off */
                }
            }
        }
        printf("ACKED %" PRIu64 "\n", acked);
        uint64_t n = verify(&r, epoch, records, depth);
        printf("VERIFIED %" PRIu64 "\n", n);
        if (n != records) {
            fprintf(stderr, "wal: read back %" PRIu64 " of %" PRIu64 " records intact\n", n, records);
            status = 1;
        }
        free(r.done);
    }

    free(blk);
    for (int i = 0; i < depth; i++)
        if ((rc = nvd_buf_free(r.slots[i].buf)) != NVD_OK) die("nvd_buf_free", rc);
    if ((rc = nvd_qpair_destroy(r.qp)) != NVD_OK) die("nvd_qpair_destroy", rc);
    if ((rc = nvd_close(ctrl)) != NVD_OK) die("nvd_close", rc);
    return status;
}
