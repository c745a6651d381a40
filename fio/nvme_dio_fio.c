/*
 * nvme_dio_fio.c: a fio external ioengine for nvme-dio, the userspace NVMe driver.
 *
 *   fio --thread=1 --ioengine=external:/path/libnvme_dio_fio.so --filename=emu.ram ...
 *
 * Built by fio/build.sh against the headers of the fio it runs under (fio 3.33, pinned:
 * fio's thread_data / io_u / ioengine_ops layouts depend on its version and configure
 * output), with nvme-dio's C ABI (capi/include/nvme_dio.h) linked in.
 *
 * Model
 *  - filename: an emulated controller in this process, named as everywhere in nvme-dio
 *    with dots for colons: "emu" (a null namespace: keeps no data), "emu.ram" (a 64 MiB
 *    RAM namespace), then ".thread" and/or ".512"; or a PCI address bound to vfio-pci, with dots
 *    because fio splits filenames at ':' ("0000.01.00.0", or "01.00.0" for domain 0).
 *    An optional " ns=N" (or "/ns=N", ",ns=N") picks the namespace (default: 1).
 *    Several files (fio's ':' list) may name several namespaces and controllers.
 *  - thread=1 is required: a controller is one VFIO device, which one process owns.
 *    Controllers are shared by the threads of the process (refcounted here); each fio
 *    thread gets its own queue pair per controller it uses.
 *  - An emulated controller keeps its data for the life of the fio process (so a write job
 *    and a later verify job see the same data); a PCI controller is closed when the last
 *    thread using it ends.
 *  - Zero copy: fio's I/O buffers are an nvd_area (DMA memory) of the job's first
 *    controller; each io_u goes to the device as its own part of that area. Files on
 *    other controllers get a second area of the same layout there and a copy (counted and
 *    printed: say so in a figure).
 *  - queue() queues; commit() writes the doorbell once for everything queued since the
 *    last commit (iodepth_batch_submit); getevents() polls (or sleeps on the queue's
 *    interrupt with intr=1) until iodepth_batch_complete_min are done.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fio.h"
#include "optgroup.h"

#include "nvme_dio.h"

#ifndef NVD_FIO_VERSION
#error "build with fio/build.sh (it defines NVD_FIO_VERSION, the pinned fio version)"
#endif

#define ENGINE "nvme_dio"

/* ---- options ------------------------------------------------------------------------- */

struct nvd_fio_options {
	void *pad; /* fio: an option's off1 must not be 0 */
	unsigned int intr;
	unsigned int queue_entries;
	unsigned int fua;
	unsigned int debug_flip_read;
};

static struct fio_option options[] = {
	{
		.name = "intr",
		.lname = "nvme-dio interrupt mode",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct nvd_fio_options, intr),
		.def = "0",
		.help = "Sleep on the queue pair's interrupt (MSI-X eventfd) instead of polling",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "queue_entries",
		.lname = "nvme-dio queue entries",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct nvd_fio_options, queue_entries),
		.def = "0",
		.help = "Entries of each queue pair (0: iodepth + 1, at least nvme-dio's default)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "fua",
		.lname = "nvme-dio FUA writes",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct nvd_fio_options, fua),
		.def = "0",
		.help = "Writes with Force Unit Access (durable when they complete)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "debug_flip_read",
		.lname = "nvme-dio test hook: corrupt a read",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct nvd_fio_options, debug_flip_read),
		.def = "0",
		.help = "TEST ONLY: flip one bit in the data of the Nth read of fio's verify phase (0: never), to see verify catch it",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = NULL,
	},
};

/* ---- controllers, shared by the threads of the process -------------------------------- */

struct nvd_dev {
	struct nvd_dev *next;
	char key[64]; /* the device string given to nvd_open */
	nvd_ctrl *ctrl;
	int refs;
	bool emu;
};

static pthread_mutex_t devs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvd_dev *devs;

/* Opens (or shares) the controller named `key`; NULL with `why` filled on failure. */
static struct nvd_dev *dev_get(const char *key, char *why, size_t why_len)
{
	struct nvd_dev *d;
	int r;

	pthread_mutex_lock(&devs_lock);
	for (d = devs; d; d = d->next)
		if (!strcmp(d->key, key))
			break;
	if (!d) {
		d = calloc(1, sizeof(*d));
		if (!d) {
			snprintf(why, why_len, "out of memory");
			goto out;
		}
		snprintf(d->key, sizeof(d->key), "%s", key);
		d->emu = !strncmp(key, "emu", 3);
		r = nvd_open(key, &d->ctrl);
		if (r != NVD_OK) {
			snprintf(why, why_len, "%s", nvd_last_error());
			free(d);
			d = NULL;
			goto out;
		}
		d->next = devs;
		devs = d;
	}
	d->refs++;
out:
	pthread_mutex_unlock(&devs_lock);
	return d;
}

/* Drops a reference; the last one closes a PCI controller (emulated ones keep their data). */
static void dev_put(struct nvd_dev *d)
{
	struct nvd_dev **pp;

	pthread_mutex_lock(&devs_lock);
	if (--d->refs == 0 && !d->emu) {
		for (pp = &devs; *pp; pp = &(*pp)->next)
			if (*pp == d) {
				*pp = d->next;
				break;
			}
		if (nvd_close(d->ctrl) != NVD_OK)
			log_err(ENGINE ": closing %s: %s\n", d->key, nvd_last_error());
		free(d);
	}
	pthread_mutex_unlock(&devs_lock);
}

/* ---- per-thread state ------------------------------------------------------------------ */

/* One controller a thread uses: its queue pair, and the area fio's buffers map to there. */
struct nvd_tctrl {
	struct nvd_dev *dev;
	nvd_qpair *qp;
	nvd_area *area;   /* NULL until iomem_alloc */
	bool own_area;    /* a copy area (not fio's own buffers): data is copied in/out */
	unsigned int outstanding;
};

struct nvd_tfile {
	struct nvd_dev *dev; /* a reference, from get_file_size (or init) */
	int ctrl;            /* index into nvd_td.ctrls once init ran */
	uint32_t nsid;
	uint32_t block_size;
	uint64_t blocks;
};

struct nvd_td {
	struct nvd_tfile *files;
	unsigned int nr_files;
	struct nvd_tctrl *ctrls;
	unsigned int nr_ctrls;
	/* io_us queued since the last commit (their doorbell is owed). */
	struct io_u **queued;
	unsigned int nr_queued;
	/* Finished io_us not yet handed to fio: a FIFO ring of iodepth entries. */
	struct io_u **done;
	unsigned int done_cap, done_head, done_len;
	/* What getevents handed out, for event(). */
	struct io_u **events;
	unsigned int verify_reads;
	uint64_t copies;
	bool failed_logged;
};

/* Per io_u: how its completion finds its thread and controller. */
struct nvd_req {
	struct io_u *io_u;
	struct nvd_td *td;
	int ctrl;
	bool read;
	unsigned int flip; /* nonzero: flip a bit when this read completes (test hook) */
};

static struct nvd_td *td_data(struct thread_data *td)
{
	struct nvd_td *t = td->io_ops_data;

	if (t)
		return t;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->nr_files = td->o.nr_files;
	t->files = calloc(t->nr_files ? t->nr_files : 1, sizeof(*t->files));
	if (!t->files) {
		free(t);
		return NULL;
	}
	td->io_ops_data = t;
	return t;
}

/* ---- filenames ------------------------------------------------------------------------- */

/*
 * "emu.ram.thread" -> "emu:ram:thread" (the library's device strings, dots for colons);
 * "0000.01.00.0" or "01.00.0" ->
 * "0000:01:00.0"; then " ns=N" / "/ns=N" / ",ns=N". fio's '\:' escape also reaches us as
 * ':', so "emu:ram" and "0000:01:00.0" are accepted as they are.
 */
static int parse_filename(const char *name, char *key, size_t key_len, uint32_t *nsid,
			  char *why, size_t why_len)
{
	char dev[48];
	const char *sep;
	size_t n;
	int dots = 0;

	*nsid = 1;
	sep = strpbrk(name, " /,");
	n = sep ? (size_t)(sep - name) : strlen(name);
	if (n == 0 || n >= sizeof(dev)) {
		snprintf(why, why_len, "empty or overlong device name");
		return 1;
	}
	memcpy(dev, name, n);
	dev[n] = 0;
	if (sep) {
		char *end;
		unsigned long v;

		while (*sep == ' ' || *sep == '/' || *sep == ',')
			sep++;
		if (strncmp(sep, "ns=", 3)) {
			snprintf(why, why_len, "after the device, only \"ns=N\" is understood, not \"%s\"", sep);
			return 1;
		}
		errno = 0;
		v = strtoul(sep + 3, &end, 10);
		if (errno || end == sep + 3 || *end || v == 0 || v > 0xffffffffUL) {
			snprintf(why, why_len, "bad namespace id \"%s\" (ns=1, ns=2, ...)", sep + 3);
			return 1;
		}
		*nsid = (uint32_t)v;
	}
	if (!strncmp(dev, "emu", 3) && (dev[3] == 0 || dev[3] == '.' || dev[3] == ':')) {
		/* The library's own device strings with dots for colons: emu (null namespace),
		 * emu.ram, then .thread and/or .512; nvd_open judges the rest. */
		snprintf(key, key_len, "%s", dev);
		for (char *p = key; *p; p++)
			if (*p == '.')
				*p = ':';
		return 0;
	}
	for (char *p = dev; *p; p++)
		dots += *p == '.';
	if (strchr(dev, ':') == NULL) {
		/* Dots for fio: the first ones separate domain, bus and device. */
		char *p = dev;
		int seps = dots - 1; /* the last dot is the function's */

		if (dots < 2 || dots > 3) {
			snprintf(why, why_len,
				 "\"%s\" is not a PCI address: write it with dots, 0000.01.00.0 (fio splits filenames at ':')",
				 dev);
			return 1;
		}
		for (; *p && seps; p++)
			if (*p == '.') {
				*p = ':';
				seps--;
			}
		if (dots == 2) {
			snprintf(key, key_len, "0000:%s", dev);
			return 0;
		}
	}
	snprintf(key, key_len, "%s", dev);
	return 0;
}

/* ---- setup: file sizes (fio's main thread, before the job's thread starts) ------------- */

static int check_thread(struct thread_data *td)
{
	if (!td->o.use_thread) {
		log_err(ENGINE ": thread=1 is required (add --thread=1, or thread=1 in the job): "
			"nvme-dio drives the device from this process, and fio's default forks a process per job\n");
		td_verror(td, EINVAL, "thread=1 is required");
		return 1;
	}
	return 0;
}

/* Opens the file's controller and namespace once per thread; fills the file's size. */
static int open_tfile(struct thread_data *td, struct fio_file *f)
{
	struct nvd_td *t = td_data(td);
	struct nvd_tfile *tf;
	char key[64], why[512];
	int n, i;

	if (!t) {
		td_verror(td, ENOMEM, "engine data");
		return 1;
	}
	if (f->fileno >= t->nr_files) {
		log_err(ENGINE ": file %s: index %u past the job's %u files\n", f->file_name,
			f->fileno, t->nr_files);
		td_verror(td, EINVAL, "file index");
		return 1;
	}
	tf = &t->files[f->fileno];
	if (tf->dev)
		goto size;
	if (parse_filename(f->file_name, key, sizeof(key), &tf->nsid, why, sizeof(why))) {
		log_err(ENGINE ": filename \"%s\": %s\n", f->file_name, why);
		td_verror(td, EINVAL, "filename");
		return 1;
	}
	tf->dev = dev_get(key, why, sizeof(why));
	if (!tf->dev) {
		log_err(ENGINE ": cannot open %s: %s\n", key, why);
		td_verror(td, ENODEV, "nvd_open");
		return 1;
	}
	n = nvd_ns_count(tf->dev->ctrl);
	for (i = 0; i < n; i++) {
		nvd_ns_info ni = { .size = sizeof ni };

		if (nvd_ns_info_get(tf->dev->ctrl, i, &ni) == NVD_OK && ni.nsid == tf->nsid) {
			tf->block_size = ni.block_size;
			tf->blocks = ni.blocks;
			break;
		}
	}
	if (!tf->block_size) {
		log_err(ENGINE ": %s has no active namespace %" PRIu32 " (it has %d)\n", key,
			tf->nsid, n);
		dev_put(tf->dev);
		tf->dev = NULL;
		td_verror(td, ENXIO, "namespace");
		return 1;
	}
size:
	f->filetype = FIO_TYPE_BLOCK;
	f->real_file_size = tf->blocks * tf->block_size;
	fio_file_set_size_known(f);
	return 0;
}

/* fio calls setup instead of get_file_size for each file: the sizes are set here. */
static int nvd_fio_setup(struct thread_data *td)
{
	struct fio_file *f;
	unsigned int i;

	if (check_thread(td))
		return 1;
	for_each_file(td, f, i)
		if (open_tfile(td, f))
			return 1;
	return 0;
}

static int nvd_fio_get_file_size(struct thread_data *td, struct fio_file *f)
{
	if (check_thread(td))
		return 1;
	return open_tfile(td, f);
}

/* ---- init / cleanup (the job's thread) ---------------------------------------------- */

static void nvd_fio_cleanup(struct thread_data *td)
{
	struct nvd_td *t = td->io_ops_data;
	unsigned int i;

	if (!t)
		return;
	for (i = 0; i < t->nr_ctrls; i++) {
		struct nvd_tctrl *c = &t->ctrls[i];

		/* Everything is reaped by now (fio waits for its io_us before cleanup). */
		if (c->own_area && nvd_area_free(c->area) != NVD_OK)
			log_err(ENGINE ": freeing a copy area: %s\n", nvd_last_error());
		if (c->qp && nvd_qpair_destroy(c->qp) != NVD_OK)
			log_err(ENGINE ": destroying a queue pair: %s\n", nvd_last_error());
	}
	for (i = 0; i < t->nr_files; i++)
		if (t->files[i].dev)
			dev_put(t->files[i].dev);
	if (t->copies)
		log_info(ENGINE ": %" PRIu64 " I/Os were copied through a second controller's area "
			 "(only the job's first controller is zero copy)\n", t->copies);
	free(t->ctrls);
	free(t->files);
	free(t->queued);
	free(t->done);
	free(t->events);
	free(t);
	td->io_ops_data = NULL;
}

static int nvd_fio_init(struct thread_data *td)
{
	struct nvd_fio_options *o = td->eo;
	struct nvd_td *t;
	struct fio_file *f;
	unsigned int i, j, depth = td->o.iodepth ? td->o.iodepth : 1;
	uint32_t entries, flags = o->intr ? NVD_QPAIR_INTERRUPT : 0;

	if (check_thread(td))
		return 1;
	t = td_data(td);
	if (!t)
		return 1;
	t->queued = calloc(depth, sizeof(*t->queued));
	t->done = calloc(depth, sizeof(*t->done));
	t->events = calloc(depth, sizeof(*t->events));
	t->ctrls = calloc(t->nr_files ? t->nr_files : 1, sizeof(*t->ctrls));
	if (!t->queued || !t->done || !t->events || !t->ctrls) {
		td_verror(td, ENOMEM, "engine data");
		return 1;
	}
	t->done_cap = depth;
	entries = o->queue_entries;
	if (!entries && depth + 1 > 256)
		entries = depth + 1;
	if (entries && entries < depth + 1) {
		log_err(ENGINE ": queue_entries=%u cannot hold iodepth=%u (one slot stays free): "
			"use queue_entries=%u or more\n", entries, depth, depth + 1);
		td_verror(td, EINVAL, "queue_entries");
		return 1;
	}
	for_each_file(td, f, i) {
		struct nvd_tfile *tf;

		if (open_tfile(td, f))
			return 1;
		tf = &t->files[f->fileno];
		for (j = 0; j < t->nr_ctrls; j++)
			if (t->ctrls[j].dev == tf->dev)
				break;
		if (j == t->nr_ctrls) {
			struct nvd_tctrl *c = &t->ctrls[t->nr_ctrls++];

			c->dev = tf->dev;
			if (nvd_qpair_create(c->dev->ctrl, entries, flags, &c->qp) != NVD_OK) {
				log_err(ENGINE ": %s: no queue pair: %s\n", c->dev->key, nvd_last_error());
				td_verror(td, ENOSPC, "nvd_qpair_create");
				return 1;
			}
		}
		tf->ctrl = j;
	}
	if (!t->nr_ctrls) {
		log_err(ENGINE ": the job has no files: give filename=emu or a PCI address\n");
		td_verror(td, EINVAL, "filename");
		return 1;
	}
	return 0;
}

/* ---- buffers: fio's io_u memory is DMA memory ------------------------------------------ */

static int nvd_fio_iomem_alloc(struct thread_data *td, size_t total)
{
	struct nvd_td *t = td->io_ops_data;
	unsigned int i;

	if (!t || !t->nr_ctrls) {
		log_err(ENGINE ": iomem_alloc before init\n");
		return 1;
	}
	for (i = 0; i < t->nr_ctrls; i++) {
		struct nvd_tctrl *c = &t->ctrls[i];

		if (nvd_area_alloc(c->dev->ctrl, total, &c->area) != NVD_OK) {
			log_err(ENGINE ": %s: cannot allocate %zu bytes of DMA memory for fio's buffers: %s\n",
				c->dev->key, total, nvd_last_error());
			td_verror(td, ENOMEM, "nvd_area_alloc");
			return 1;
		}
		c->own_area = i > 0;
	}
	td->orig_buffer = nvd_area_ptr(t->ctrls[0].area);
	return 0;
}

static void nvd_fio_iomem_free(struct thread_data *td)
{
	struct nvd_td *t = td->io_ops_data;

	if (!t || !t->nr_ctrls || !t->ctrls[0].area)
		return;
	if (nvd_area_free(t->ctrls[0].area) != NVD_OK)
		log_err(ENGINE ": freeing fio's buffers: %s\n", nvd_last_error());
	t->ctrls[0].area = NULL;
	td->orig_buffer = NULL;
}

static int nvd_fio_io_u_init(struct thread_data *td, struct io_u *io_u)
{
	struct nvd_req *r = calloc(1, sizeof(*r));

	if (!r)
		return 1;
	r->io_u = io_u;
	r->td = td->io_ops_data;
	io_u->engine_data = r;
	return 0;
}

static void nvd_fio_io_u_free(struct thread_data *td, struct io_u *io_u)
{
	free(io_u->engine_data);
	io_u->engine_data = NULL;
}

/* ---- I/O -------------------------------------------------------------------------------- */

static int errno_of(int32_t status)
{
	switch (status) {
	case NVD_OK:
		return 0;
	case NVD_ERR_INVALID:
	case NVD_ERR_RANGE:
		return EINVAL;
	case NVD_ERR_BUSY:
		return EBUSY;
	case NVD_ERR_QUEUE_FULL:
		return EAGAIN;
	case NVD_ERR_NO_DEVICE:
		return ENODEV;
	case NVD_ERR_NO_MEMORY:
		return ENOMEM;
	case NVD_ERR_TIMEOUT:
		return ETIMEDOUT;
	case NVD_ERR_UNSUPPORTED:
		return EOPNOTSUPP;
	default:
		return EIO;
	}
}

static void on_done(void *ctx, int32_t status, uint16_t nvme_status)
{
	struct nvd_req *r = ctx;
	struct io_u *io_u = r->io_u;
	struct nvd_td *t = r->td;
	struct nvd_tctrl *c = &t->ctrls[r->ctrl];

	c->outstanding--;
	io_u->error = errno_of(status);
	if (status != NVD_OK) {
		if (!t->failed_logged) {
			/* fio prints the errno; this says what the device said. */
			log_err(ENGINE ": %s: I/O at offset %llu failed: %s (NVMe status %#x)\n",
				c->dev->key, io_u->offset, nvd_last_error(), nvme_status);
			t->failed_logged = true;
		}
	} else if (r->read) {
		if (c->own_area) {
			size_t off = (char *)io_u->xfer_buf - (char *)nvd_area_ptr(t->ctrls[0].area);

			memcpy(io_u->xfer_buf, (char *)nvd_area_ptr(c->area) + off, io_u->xfer_buflen);
		}
		if (r->flip) {
			/* The test hook: what a device returning bad data looks like to fio. */
			((unsigned char *)io_u->xfer_buf)[io_u->xfer_buflen / 2] ^= 0x10;
			r->flip = 0;
		}
	}
	io_u->resid = io_u->error ? io_u->xfer_buflen : 0;
	t->done[(t->done_head + t->done_len) % t->done_cap] = io_u;
	t->done_len++;
}

static enum fio_q_status nvd_fio_queue(struct thread_data *td, struct io_u *io_u)
{
	struct nvd_fio_options *o = td->eo;
	struct nvd_td *t = td->io_ops_data;
	struct nvd_req *r = io_u->engine_data;
	struct nvd_tfile *tf = &t->files[io_u->file->fileno];
	struct nvd_tctrl *c = &t->ctrls[tf->ctrl];
	uint64_t lba = io_u->offset / tf->block_size;
	int32_t rc;

	fio_ro_check(td, io_u);
	r->ctrl = tf->ctrl;
	r->read = false;
	if ((ddir_rw(io_u->ddir) || io_u->ddir == DDIR_TRIM) &&
	    (io_u->offset % tf->block_size || io_u->xfer_buflen % tf->block_size ||
	     !io_u->xfer_buflen)) {
		log_err(ENGINE ": offset %llu / length %llu are not multiples of the %u-byte "
			"block size: set bs= (and offset alignment) to a multiple of it\n",
			io_u->offset, io_u->xfer_buflen, tf->block_size);
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	switch (io_u->ddir) {
	case DDIR_READ:
	case DDIR_WRITE: {
		size_t off = (char *)io_u->xfer_buf - (char *)td->orig_buffer;

		if (io_u->ddir == DDIR_READ) {
			r->read = true;
			if (o->debug_flip_read && td->runstate == TD_VERIFYING &&
			    ++t->verify_reads == o->debug_flip_read)
				r->flip = 1;
			rc = nvd_area_read(c->qp, tf->nsid, lba, c->area, off, io_u->xfer_buflen,
					   on_done, r);
		} else {
			if (c->own_area) {
				memcpy((char *)nvd_area_ptr(c->area) + off, io_u->xfer_buf,
				       io_u->xfer_buflen);
				t->copies++;
			}
			rc = nvd_area_write(c->qp, tf->nsid, lba, c->area, off, io_u->xfer_buflen,
					    o->fua ? NVD_WRITE_FUA : 0, on_done, r);
		}
		if (c->own_area && io_u->ddir == DDIR_READ)
			t->copies++;
		break;
	}
	case DDIR_TRIM: {
		uint64_t blocks = io_u->xfer_buflen / tf->block_size;

		if (blocks > 0xffffffffULL) {
			io_u->error = EINVAL;
			return FIO_Q_COMPLETED;
		}
		rc = nvd_deallocate(c->qp, tf->nsid, lba, (uint32_t)blocks, on_done, r);
		break;
	}
	case DDIR_SYNC:
	case DDIR_DATASYNC:
		rc = nvd_flush(c->qp, tf->nsid, on_done, r);
		break;
	default:
		log_err(ENGINE ": %s is not supported (only read, write, trim, fsync, fdatasync)\n",
			io_ddir_name(io_u->ddir));
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	if (rc == NVD_ERR_QUEUE_FULL)
		return FIO_Q_BUSY; /* fio commits, reaps, and queues it again */
	if (rc != NVD_OK) {
		log_err(ENGINE ": %s: %s at offset %llu refused: %s\n", c->dev->key,
			io_ddir_name(io_u->ddir), io_u->offset, nvd_last_error());
		io_u->error = errno_of(rc);
		return FIO_Q_COMPLETED;
	}
	c->outstanding++;
	t->queued[t->nr_queued++] = io_u;
	return FIO_Q_QUEUED;
}

/* Runs completions of every queue pair once; negative on a queue pair failure. */
static int poll_all(struct thread_data *td, struct nvd_td *t)
{
	unsigned int i;

	for (i = 0; i < t->nr_ctrls; i++) {
		int32_t r = nvd_poll(t->ctrls[i].qp);

		if (r < 0) {
			log_err(ENGINE ": %s: polling failed: %s\n", t->ctrls[i].dev->key,
				nvd_last_error());
			td_verror(td, errno_of(r), "nvd_poll");
			return -errno_of(r);
		}
	}
	return 0;
}

/* One doorbell per queue pair for everything queued since the last commit. */
static int nvd_fio_commit(struct thread_data *td)
{
	struct nvd_td *t = td->io_ops_data;
	struct timespec now;
	unsigned int i, n = t->nr_queued;

	if (!n)
		return 0;
	if (fio_fill_issue_time(td)) {
		fio_gettime(&now, NULL);
		for (i = 0; i < n; i++) {
			memcpy(&t->queued[i]->issue_time, &now, sizeof(now));
			io_u_queued(td, t->queued[i]);
		}
	}
	t->nr_queued = 0;
	io_u_mark_submit(td, n);
	/* nvd_poll writes the SQ doorbell once and reaps what is already done. */
	return poll_all(td, t);
}

static int nvd_fio_getevents(struct thread_data *td, unsigned int min, unsigned int max,
			     const struct timespec *timeout)
{
	struct nvd_fio_options *o = td->eo;
	struct nvd_td *t = td->io_ops_data;
	struct timespec start;
	unsigned int n = 0, i;
	int r;

	if (timeout)
		fio_gettime(&start, NULL);
	for (;;) {
		while (n < max && t->done_len) {
			t->events[n++] = t->done[t->done_head];
			t->done_head = (t->done_head + 1) % t->done_cap;
			t->done_len--;
		}
		if (n >= min || n >= max)
			return n;
		for (i = 0; i < t->nr_ctrls; i++)
			if (t->ctrls[i].outstanding)
				break;
		if (i == t->nr_ctrls)
			return n; /* nothing in flight: nothing to wait for */
		if (timeout && utime_since_now(&start) >= timeout->tv_sec * 1000000ULL +
							  timeout->tv_nsec / 1000)
			return n;
		if (o->intr) {
			/* Sleep on the interrupt of a queue pair with requests in flight. */
			unsigned int busy = 0, which = 0;

			for (i = 0; i < t->nr_ctrls; i++)
				if (t->ctrls[i].outstanding) {
					busy++;
					which = i;
				}
			if (!busy)
				return n;
			r = nvd_wait(t->ctrls[which].qp, busy == 1 ? 100 : 1);
			if (r < 0) {
				log_err(ENGINE ": %s: waiting failed: %s\n",
					t->ctrls[which].dev->key, nvd_last_error());
				return -errno_of(r);
			}
			if (busy > 1 && (r = poll_all(td, t)) < 0)
				return r;
		} else if ((r = poll_all(td, t)) < 0) {
			return r;
		}
	}
}

static struct io_u *nvd_fio_event(struct thread_data *td, int event)
{
	struct nvd_td *t = td->io_ops_data;

	return t->events[event];
}

static int nvd_fio_open_file(struct thread_data *td, struct fio_file *f)
{
	struct nvd_td *t = td->io_ops_data;

	if (!t || f->fileno >= t->nr_files || !t->files[f->fileno].dev) {
		log_err(ENGINE ": %s was not set up\n", f->file_name);
		return 1;
	}
	return 0;
}

static int nvd_fio_close_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static int nvd_fio_invalidate(struct thread_data *td, struct fio_file *f)
{
	return 0; /* no page cache on this path */
}

static struct ioengine_ops ops = {
	.name = ENGINE,
	.version = FIO_IOOPS_VERSION,
	.flags = FIO_RAWIO | FIO_DISKLESSIO | FIO_NODISKUTIL | FIO_NOEXTEND | FIO_MEMALIGN |
		 FIO_ASYNCIO_SETS_ISSUE_TIME,
	.setup = nvd_fio_setup,
	.init = nvd_fio_init,
	.queue = nvd_fio_queue,
	.commit = nvd_fio_commit,
	.getevents = nvd_fio_getevents,
	.event = nvd_fio_event,
	.cleanup = nvd_fio_cleanup,
	.open_file = nvd_fio_open_file,
	.close_file = nvd_fio_close_file,
	.invalidate = nvd_fio_invalidate,
	.get_file_size = nvd_fio_get_file_size,
	.iomem_alloc = nvd_fio_iomem_alloc,
	.iomem_free = nvd_fio_iomem_free,
	.io_u_init = nvd_fio_io_u_init,
	.io_u_free = nvd_fio_io_u_free,
	.options = options,
	.option_struct_size = sizeof(struct nvd_fio_options),
};

/*
 * fio's entry point for external engines (there is deliberately no symbol named
 * "ioengine", so fio calls this). The structures above are laid out as in the fio this was
 * built against; under any other fio they would be misread, so refuse it here, before fio
 * looks at them.
 */
void get_ioengine(struct ioengine_ops **out)
{
	if (strcmp(fio_version_string, NVD_FIO_VERSION)) {
		log_err(ENGINE ": this engine was built against %s's headers, but this fio is %s: "
			"rebuild it for this fio (fio/build.sh pins the version), or run %s\n",
			NVD_FIO_VERSION, fio_version_string, NVD_FIO_VERSION);
		return;
	}
	*out = &ops;
}
