/* nh_hash.c - one-shot and pipelined (helper thread) BLAKE2b-256. */
#include "nh_hash.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nh_crypto.h"

/* Jobs this small are hashed on the caller's thread when the helper is idle. */
#define NH_HASH_INLINE_MAX (16u * 1024u)
#define NH_HASH_QUEUE 64u
#define NH_HASH_STACK (256u * 1024u)

typedef struct nh_hash_job {
    const unsigned char *data;
    size_t len;
} nh_hash_job;

struct nh_hasher {
    /* libsodium declares its state 64-byte aligned. */
    _Alignas(64) unsigned char state[NH_BLAKE2B_STATE_MAX];
    const nh_crypto *crypto;
    pthread_mutex_t mu;
    pthread_cond_t work;    /* helper waits: a job was queued or stop was set */
    pthread_cond_t done;    /* caller waits: a job finished */
    nh_hash_job queue[NH_HASH_QUEUE];
    uint64_t submitted;     /* jobs queued so far (job numbers are 1..submitted) */
    uint64_t completed;     /* jobs hashed so far, in order */
    int stop;
    int thread_started;     /* 1 running, 0 not yet, -1 could not start (hash inline) */
    pthread_t thread;
};

static void update(const nh_crypto *crypto, void *state, const unsigned char *data, size_t len) {
    /* Never fails for a valid state; feed it in pieces that fit any ABI's inlen. */
    while (len > 0) {
        size_t piece = len > (1u << 30) ? (1u << 30) : len;
        crypto->blake2b_update(state, data, (unsigned long long)piece);
        data += piece;
        len -= piece;
    }
}

int nh_blake2b_256(const void *data, size_t len, unsigned char out[NH_BLAKE2B_256_BYTES], nh_err *err) {
    const nh_crypto *crypto = nh_crypto_get();
    if (!crypto)
        return nh_fail(err, "libsodium is not installed into nh_crypto");
    _Alignas(64) unsigned char state[NH_BLAKE2B_STATE_MAX];
    if (crypto->blake2b_init(state, NULL, 0, NH_BLAKE2B_256_BYTES, NULL, NULL) != 0)
        return nh_fail(err, "blake2b init failed");
    update(crypto, state, data, len);
    if (crypto->blake2b_final(state, out, NH_BLAKE2B_256_BYTES) != 0)
        return nh_fail(err, "blake2b final failed");
    return 0;
}

static void *hasher_main(void *arg) {
    nh_hasher *h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->stop && h->completed == h->submitted)
            pthread_cond_wait(&h->work, &h->mu);
        if (h->stop)
            break;
        nh_hash_job job = h->queue[h->completed % NH_HASH_QUEUE];
        pthread_mutex_unlock(&h->mu);
        /* Only this thread touches the state while jobs are outstanding. */
        update(h->crypto, h->state, job.data, job.len);
        pthread_mutex_lock(&h->mu);
        h->completed++;
        pthread_cond_signal(&h->done);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

int nh_hasher_new(nh_hasher **out, nh_err *err) {
    *out = NULL;
    const nh_crypto *crypto = nh_crypto_get();
    if (!crypto)
        return nh_fail(err, "libsodium is not installed into nh_crypto");
    nh_hasher *h = calloc(1, sizeof(*h));
    if (!h)
        return nh_fail(err, "out of memory");
    h->crypto = crypto;
    if (pthread_mutex_init(&h->mu, NULL) != 0) {
        free(h);
        return nh_fail(err, "pthread_mutex_init failed");
    }
    if (pthread_cond_init(&h->work, NULL) != 0) {
        pthread_mutex_destroy(&h->mu);
        free(h);
        return nh_fail(err, "pthread_cond_init failed");
    }
    if (pthread_cond_init(&h->done, NULL) != 0) {
        pthread_cond_destroy(&h->work);
        pthread_mutex_destroy(&h->mu);
        free(h);
        return nh_fail(err, "pthread_cond_init failed");
    }
    *out = h;
    return 0;
}

void nh_hasher_free(nh_hasher *h) {
    if (!h)
        return;
    if (h->thread_started == 1) {
        pthread_mutex_lock(&h->mu);
        h->stop = 1;
        pthread_cond_signal(&h->work);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL);
    }
    pthread_cond_destroy(&h->done);
    pthread_cond_destroy(&h->work);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

/* Starts the helper on first use; on failure everything is hashed inline. */
static void start_thread(nh_hasher *h) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) {
        h->thread_started = -1;
        return;
    }
    pthread_attr_setstacksize(&attr, NH_HASH_STACK);
    h->thread_started = pthread_create(&h->thread, &attr, hasher_main, h) == 0 ? 1 : -1;
    pthread_attr_destroy(&attr);
}

int nh_hasher_begin(nh_hasher *h, nh_err *err) {
    nh_hasher_wait(h, UINT64_MAX);
    if (h->crypto->blake2b_init(h->state, NULL, 0, NH_BLAKE2B_256_BYTES, NULL, NULL) != 0)
        return nh_fail(err, "blake2b init failed");
    return 0;
}

uint64_t nh_hasher_submit(nh_hasher *h, const void *data, size_t len) {
    if (h->thread_started == 0 && len > NH_HASH_INLINE_MAX)
        start_thread(h);
    pthread_mutex_lock(&h->mu);
    if (h->thread_started != 1 || (h->completed == h->submitted && len <= NH_HASH_INLINE_MAX)) {
        /* Helper idle (or absent, then the queue is always empty): hash here.
         * The mutex orders our state accesses against the helper's. */
        uint64_t seq = ++h->submitted;
        update(h->crypto, h->state, data, len);
        h->completed = seq;
        pthread_mutex_unlock(&h->mu);
        return seq;
    }
    while (h->submitted - h->completed >= NH_HASH_QUEUE)
        pthread_cond_wait(&h->done, &h->mu);
    h->queue[h->submitted % NH_HASH_QUEUE] = (nh_hash_job){(const unsigned char *)data, len};
    uint64_t seq = ++h->submitted;
    pthread_cond_signal(&h->work);
    pthread_mutex_unlock(&h->mu);
    return seq;
}

void nh_hasher_wait(nh_hasher *h, uint64_t seq) {
    pthread_mutex_lock(&h->mu);
    if (seq > h->submitted)
        seq = h->submitted;
    while (h->completed < seq)
        pthread_cond_wait(&h->done, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

int nh_hasher_finish(nh_hasher *h, unsigned char out[NH_BLAKE2B_256_BYTES], nh_err *err) {
    nh_hasher_wait(h, UINT64_MAX);
    if (h->crypto->blake2b_final(h->state, out, NH_BLAKE2B_256_BYTES) != 0)
        return nh_fail(err, "blake2b final failed");
    return 0;
}

/* libsodium's blake2b_state: h[8], t[2], f[2] (u64), buf[256], then size_t buflen. */
#define SODIUM_BUF_BYTES 256u
#define SODIUM_BUFLEN_AT 352u

int nh_hasher_export(nh_hasher *h, unsigned char *out, size_t cap, size_t *len, nh_err *err) {
    nh_hasher_wait(h, UINT64_MAX);
    size_t size = h->crypto->blake2b_state_size;
    if (size > cap)
        return nh_fail(err, "blake2b state too large");
    memcpy(out, h->state, size);
    *len = size;
    return 0;
}

int nh_hasher_import(nh_hasher *h, const unsigned char *state, size_t len, nh_err *err) {
    nh_hasher_wait(h, UINT64_MAX);
    size_t size = h->crypto->blake2b_state_size;
    if (len != size)
        return nh_fail(err, "blake2b state of %zu bytes, expected %zu", len, size);
    if (size < SODIUM_BUFLEN_AT + sizeof(size_t))
        return nh_fail(err, "unknown blake2b state layout");
    size_t buflen;
    memcpy(&buflen, state + SODIUM_BUFLEN_AT, sizeof(buflen));
    if (buflen > SODIUM_BUF_BYTES)
        return nh_fail(err, "corrupt blake2b state");
    memcpy(h->state, state, size);
    return 0;
}
