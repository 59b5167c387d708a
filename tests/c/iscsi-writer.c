/*
 * A small initiator over libiscsi for the failover tests (tests/tests/
 * iscsi_failover.rs): what a simple VM host does, made checkable.
 *
 *   iscsi-writer write URL[,URL...] BLOCKS SECONDS TAG
 *       Writes numbered, checksummed 4 KiB blocks (block = seq % BLOCKS)
 *       with FUA, and a SYNCHRONIZE CACHE every 16th, for SECONDS. A write
 *       that fails moves to the next URL (and around again) until one
 *       accepts it. Prints "ack SEQ BLOCK MS" for each acknowledged write,
 *       "fail SEQ MS WHY" at the first failure of a write, and
 *       "resumed SEQ MS URL GAP_MS" when writing resumes; first of all
 *       "start MS", its CLOCK_MONOTONIC time, from which the others count.
 *   iscsi-writer verify URL BLOCKS
 *       Reads every block: "block B TAG SEQ" for a well-formed one,
 *       "block B empty" for zeros, "block B bad" for anything else.
 *   iscsi-writer register URL KEY        PR OUT REGISTER (service action 0)
 *   iscsi-writer reserve URL KEY TYPE    REGISTER, then RESERVE (one nexus)
 *   iscsi-writer keys URL                PR IN READ KEYS: "gen G keys K..."
 *   iscsi-writer holder URL              PR IN READ RESERVATION:
 *                                        "reservation KEY TYPE" or "none"
 *
 * Exit 0 on success; 2 on usage; 1 when a command could not be done.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BLOCK 4096
#define INITIATOR "iqn.2026-12.org.sparefs:failover-test"

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void fill(unsigned char *b, uint64_t seq, uint64_t block, uint64_t tag)
{
	memcpy(b, "SPFWRT01", 8);
	put64(b + 8, seq);
	put64(b + 16, block);
	put64(b + 24, tag);
	uint64_t x = seq ^ (tag * 0x9e3779b97f4a7c15ULL) ^ 0x2545f4914f6cdd1dULL;
	for (size_t i = 32; i < BLOCK - 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (unsigned char)x;
	}
	put64(b + BLOCK - 8, fnv1a(b, BLOCK - 8));
}

struct conn {
	struct iscsi_context *iscsi;
	int lun;
};

static void disconnect(struct conn *c)
{
	if (c->iscsi) {
		iscsi_destroy_context(c->iscsi);
		c->iscsi = NULL;
	}
}

/* Connects to one URL; 0 on success. */
static int connect_url(struct conn *c, const char *url, int timeout_s)
{
	struct iscsi_context *iscsi = iscsi_create_context(INITIATOR);
	if (!iscsi)
		return -1;
	struct iscsi_url *u = iscsi_parse_full_url(iscsi, url);
	if (!u) {
		fprintf(stderr, "bad url %s: %s\n", url, iscsi_get_error(iscsi));
		iscsi_destroy_context(iscsi);
		return -1;
	}
	iscsi_set_targetname(iscsi, u->target);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
	/* Failover is this program's job, not libiscsi's reconnect. */
	iscsi_set_noautoreconnect(iscsi, 1);
	iscsi_set_timeout(iscsi, timeout_s);
	if (iscsi_full_connect_sync(iscsi, u->portal, u->lun) != 0) {
		fprintf(stderr, "connect %s: %s\n", url, iscsi_get_error(iscsi));
		iscsi_destroy_url(u);
		iscsi_destroy_context(iscsi);
		return -1;
	}
	c->iscsi = iscsi;
	c->lun = u->lun;
	iscsi_destroy_url(u);
	return 0;
}

/* A command's outcome: 0 good, 1 unit attention (retry on this path),
 * -1 anything else (move on). */
static int outcome(struct conn *c, struct scsi_task *t, char *why, size_t n)
{
	if (!t) {
		snprintf(why, n, "transport: %s", iscsi_get_error(c->iscsi));
		return -1;
	}
	int r;
	if (t->status == SCSI_STATUS_GOOD) {
		r = 0;
	} else if (t->status == SCSI_STATUS_CHECK_CONDITION &&
		   t->sense.key == SCSI_SENSE_UNIT_ATTENTION) {
		r = 1;
	} else {
		snprintf(why, n, "status 0x%02x sense %d/0x%04x", t->status,
			 (int)t->sense.key, t->sense.ascq);
		r = -1;
	}
	scsi_free_scsi_task(t);
	return r;
}

static int split(char *s, char **out, int max)
{
	int n = 0;
	for (char *p = strtok(s, ","); p && n < max; p = strtok(NULL, ","))
		out[n++] = p;
	return n;
}

static int cmd_write(char *urls_arg, uint64_t blocks, int seconds, uint64_t tag)
{
	char *urls[16];
	int nurls = split(urls_arg, urls, 16);
	struct conn c = {0};
	int at = 0;
	unsigned char *buf = malloc(BLOCK);
	uint64_t start = now_ms(), failed_at = 0;
	uint64_t seq = 0;
	char why[256];
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* CLOCK_MONOTONIC at the start: lines below count from it. */
	printf("start %" PRIu64 "\n", start);
	while (now_ms() - start < (uint64_t)seconds * 1000) {
		if (!c.iscsi && connect_url(&c, urls[at], 3) != 0) {
			if (!failed_at) {
				failed_at = now_ms();
				printf("fail %" PRIu64 " %" PRIu64 " connect %s\n", seq,
				       failed_at - start, urls[at]);
			}
			at = (at + 1) % nurls;
			usleep(100 * 1000);
			continue;
		}
		uint64_t block = seq % blocks;
		fill(buf, seq, block, tag);
		struct scsi_task *t = iscsi_write16_sync(c.iscsi, c.lun, block * (BLOCK / 512),
							 buf, BLOCK, 512, 0, 0, 1, 0, 0);
		int r = outcome(&c, t, why, sizeof(why));
		if (r == 0 && seq % 16 == 15) {
			t = iscsi_synchronizecache10_sync(c.iscsi, c.lun, 0, 0, 0, 0);
			r = outcome(&c, t, why, sizeof(why));
		}
		if (r == 1)
			continue;
		if (r < 0) {
			if (!failed_at) {
				failed_at = now_ms();
				printf("fail %" PRIu64 " %" PRIu64 " %s\n", seq, failed_at - start, why);
			}
			disconnect(&c);
			at = (at + 1) % nurls;
			usleep(100 * 1000);
			continue;
		}
		uint64_t t_ms = now_ms();
		if (failed_at) {
			printf("resumed %" PRIu64 " %" PRIu64 " %s %" PRIu64 "\n", seq, t_ms - start,
			       urls[at], t_ms - failed_at);
			failed_at = 0;
		}
		printf("ack %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", seq, block, t_ms - start);
		seq++;
	}
	disconnect(&c);
	free(buf);
	return 0;
}

static int cmd_verify(char *url, uint64_t blocks)
{
	struct conn c = {0};
	char why[256];
	if (connect_url(&c, url, 10) != 0)
		return 1;
	for (uint64_t b = 0; b < blocks; b++) {
		struct scsi_task *t;
		int tries = 0;
		for (;;) {
			t = iscsi_read16_sync(c.iscsi, c.lun, b * (BLOCK / 512), BLOCK, 512, 0, 0, 0, 0, 0);
			if (t && t->status == SCSI_STATUS_CHECK_CONDITION &&
			    t->sense.key == SCSI_SENSE_UNIT_ATTENTION && tries++ < 8) {
				scsi_free_scsi_task(t);
				continue;
			}
			break;
		}
		if (!t || t->status != SCSI_STATUS_GOOD || t->datain.size != BLOCK) {
			if (t)
				outcome(&c, t, why, sizeof(why));
			else
				snprintf(why, sizeof(why), "%s", iscsi_get_error(c.iscsi));
			fprintf(stderr, "read block %" PRIu64 ": %s\n", b, why);
			disconnect(&c);
			return 1;
		}
		const unsigned char *d = t->datain.data;
		int zero = 1;
		for (int i = 0; i < BLOCK; i++)
			if (d[i]) {
				zero = 0;
				break;
			}
		if (zero)
			printf("block %" PRIu64 " empty\n", b);
		else if (memcmp(d, "SPFWRT01", 8) == 0 && get64(d + 16) == b &&
			 get64(d + BLOCK - 8) == fnv1a(d, BLOCK - 8))
			printf("block %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", b, get64(d + 24),
			       get64(d + 8));
		else
			printf("block %" PRIu64 " bad\n", b);
		scsi_free_scsi_task(t);
	}
	disconnect(&c);
	return 0;
}

/* Runs a command until it is not a unit attention; 0 when good. */
#define RETRY_UA(expr)                                                             \
	({                                                                         \
		struct scsi_task *t_;                                              \
		int n_ = 0;                                                        \
		for (;;) {                                                         \
			t_ = (expr);                                               \
			if (t_ && t_->status == SCSI_STATUS_CHECK_CONDITION &&     \
			    t_->sense.key == SCSI_SENSE_UNIT_ATTENTION && n_++ < 8) { \
				scsi_free_scsi_task(t_);                           \
				continue;                                          \
			}                                                          \
			break;                                                     \
		}                                                                  \
		t_;                                                                \
	})

static int cmd_prout(char *url, int sa, uint64_t key, int type)
{
	struct conn c = {0};
	char why[256];
	if (connect_url(&c, url, 10) != 0)
		return 1;
	struct scsi_persistent_reserve_out_basic p;
	memset(&p, 0, sizeof(p));
	/* Registered first, on the same I_T nexus as the reservation. */
	p.service_action_reservation_key = key;
	struct scsi_task *t = RETRY_UA(iscsi_persistent_reserve_out_sync(
		c.iscsi, c.lun, SCSI_PERSISTENT_RESERVE_REGISTER, 0, 0, &p));
	int r = outcome(&c, t, why, sizeof(why));
	if (r == 0 && sa != SCSI_PERSISTENT_RESERVE_REGISTER) {
		memset(&p, 0, sizeof(p));
		p.reservation_key = key;
		t = RETRY_UA(iscsi_persistent_reserve_out_sync(c.iscsi, c.lun, sa, 0, type, &p));
		r = outcome(&c, t, why, sizeof(why));
	}
	if (r != 0)
		fprintf(stderr, "PR OUT: %s\n", why);
	disconnect(&c);
	return r == 0 ? 0 : 1;
}

static int cmd_prin(char *url, int sa)
{
	struct conn c = {0};
	if (connect_url(&c, url, 10) != 0)
		return 1;
	struct scsi_task *t = RETRY_UA(iscsi_persistent_reserve_in_sync(c.iscsi, c.lun, sa, 8192));
	if (!t || t->status != SCSI_STATUS_GOOD) {
		fprintf(stderr, "PR IN failed\n");
		disconnect(&c);
		return 1;
	}
	void *d = scsi_datain_unmarshall(t);
	if (!d) {
		fprintf(stderr, "PR IN: bad data\n");
		disconnect(&c);
		return 1;
	}
	if (sa == SCSI_PERSISTENT_RESERVE_READ_KEYS) {
		struct scsi_persistent_reserve_in_read_keys *k = d;
		printf("gen %" PRIu32 " keys", k->prgeneration);
		for (int i = 0; i < k->num_keys; i++)
			printf(" %" PRIx64, k->keys[i]);
		printf("\n");
	} else {
		struct scsi_persistent_reserve_in_read_reservation *r = d;
		if (r->reserved)
			printf("reservation %" PRIx64 " %d\n", r->reservation_key, r->pr_type);
		else
			printf("none\n");
	}
	scsi_free_scsi_task(t);
	disconnect(&c);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 6 && !strcmp(argv[1], "write"))
		return cmd_write(argv[2], strtoull(argv[3], NULL, 0), atoi(argv[4]),
				 strtoull(argv[5], NULL, 0));
	if (argc >= 4 && !strcmp(argv[1], "verify"))
		return cmd_verify(argv[2], strtoull(argv[3], NULL, 0));
	if (argc >= 4 && !strcmp(argv[1], "register"))
		return cmd_prout(argv[2], SCSI_PERSISTENT_RESERVE_REGISTER,
				 strtoull(argv[3], NULL, 16), 0);
	if (argc >= 5 && !strcmp(argv[1], "reserve"))
		return cmd_prout(argv[2], SCSI_PERSISTENT_RESERVE_RESERVE,
				 strtoull(argv[3], NULL, 16), atoi(argv[4]));
	if (argc >= 3 && !strcmp(argv[1], "keys"))
		return cmd_prin(argv[2], SCSI_PERSISTENT_RESERVE_READ_KEYS);
	if (argc >= 3 && !strcmp(argv[1], "holder"))
		return cmd_prin(argv[2], SCSI_PERSISTENT_RESERVE_READ_RESERVATION);
	fprintf(stderr, "usage: see the top of iscsi-writer.c\n");
	return 2;
}
