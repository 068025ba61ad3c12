/* BLAKE2b (RFC 7693) with an 8-byte digest and no key: the hash of the feature space (see features.py),
 * bitwise hashlib.blake2b(data, digest_size=8). Streaming, so that a name "k=v" is hashed from its parts.
 * The digest's 8 bytes read little-endian are the first word of the state. */
#ifndef STREAM_LOGREG_BLAKE2B_H
#define STREAM_LOGREG_BLAKE2B_H

#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t h[8];
    uint64_t t;
    size_t n;
    unsigned char buf[128];
} b2_state;

static const uint64_t b2_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const unsigned char b2_sigma[10][16] = {  /* rounds 10 and 11 reuse rows 0 and 1 */
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t b2_rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t b2_load(const unsigned char* p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

#define B2_G(a, b, c, d, x, y)             \
    do {                                   \
        a = a + b + (x);                   \
        d = b2_rotr(d ^ a, 32);            \
        c = c + d;                         \
        b = b2_rotr(b ^ c, 24);            \
        a = a + b + (y);                   \
        d = b2_rotr(d ^ a, 16);            \
        c = c + d;                         \
        b = b2_rotr(b ^ c, 63);            \
    } while (0)

/* One round with the message words of sigma row z, a constant: every m[] index is then a constant and the
 * twelve rounds unrolled below keep v in registers (a loop over the rows reads them from memory). */
#define B2_ROUND(z)                                                        \
    do {                                                                   \
        B2_G(v0, v4, v8, v12, m[b2_sigma[z][0]], m[b2_sigma[z][1]]);       \
        B2_G(v1, v5, v9, v13, m[b2_sigma[z][2]], m[b2_sigma[z][3]]);       \
        B2_G(v2, v6, v10, v14, m[b2_sigma[z][4]], m[b2_sigma[z][5]]);      \
        B2_G(v3, v7, v11, v15, m[b2_sigma[z][6]], m[b2_sigma[z][7]]);      \
        B2_G(v0, v5, v10, v15, m[b2_sigma[z][8]], m[b2_sigma[z][9]]);      \
        B2_G(v1, v6, v11, v12, m[b2_sigma[z][10]], m[b2_sigma[z][11]]);    \
        B2_G(v2, v7, v8, v13, m[b2_sigma[z][12]], m[b2_sigma[z][13]]);     \
        B2_G(v3, v4, v9, v14, m[b2_sigma[z][14]], m[b2_sigma[z][15]]);     \
    } while (0)

/* The compression of the words m[16] (a macro, so that a caller whose words are known zeros gets them
 * folded away). */
#define B2_COMPRESS(s, m, last)                                                                     \
    do {                                                                                            \
        uint64_t v0 = (s)->h[0], v1 = (s)->h[1], v2 = (s)->h[2], v3 = (s)->h[3];                    \
        uint64_t v4 = (s)->h[4], v5 = (s)->h[5], v6 = (s)->h[6], v7 = (s)->h[7];                    \
        uint64_t v8 = b2_iv[0], v9 = b2_iv[1], v10 = b2_iv[2], v11 = b2_iv[3];                      \
        /* the high word of the counter stays 0: names are far below 2^64 bytes */                  \
        uint64_t v12 = b2_iv[4] ^ (s)->t, v13 = b2_iv[5];                                           \
        uint64_t v14 = (last) ? ~b2_iv[6] : b2_iv[6], v15 = b2_iv[7];                               \
        B2_ROUND(0); B2_ROUND(1); B2_ROUND(2); B2_ROUND(3); B2_ROUND(4); B2_ROUND(5);               \
        B2_ROUND(6); B2_ROUND(7); B2_ROUND(8); B2_ROUND(9); B2_ROUND(0); B2_ROUND(1);               \
        (s)->h[0] ^= v0 ^ v8; (s)->h[1] ^= v1 ^ v9; (s)->h[2] ^= v2 ^ v10; (s)->h[3] ^= v3 ^ v11;   \
        (s)->h[4] ^= v4 ^ v12; (s)->h[5] ^= v5 ^ v13; (s)->h[6] ^= v6 ^ v14; (s)->h[7] ^= v7 ^ v15; \
    } while (0)

static void b2_compress(b2_state* s, const unsigned char* block, int last) {
    uint64_t m[16];
    for (int i = 0; i < 16; i++) m[i] = b2_load(block + 8 * i);
    B2_COMPRESS(s, m, last);
}

/* The last and only block of a message of at most 16 bytes (most names): 14 of its 16 words are zero. */
static void b2_compress_short(b2_state* s, const unsigned char* block) {
    const uint64_t m[16] = {b2_load(block), b2_load(block + 8), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    B2_COMPRESS(s, m, 1);
}

static inline void b2_init(b2_state* s) {
    for (int i = 0; i < 8; i++) s->h[i] = b2_iv[i];
    s->h[0] ^= 0x01010000ULL ^ 8ULL;  /* digest length 8, no key, fan-out 1, depth 1 */
    s->t = 0;
    s->n = 0;
}

static void b2_update(b2_state* s, const char* data, size_t len) {
    const unsigned char* in = (const unsigned char*) data;
    while (len > 0) {
        if (s->n == 128) {  /* a full block is compressed only once more data follows */
            s->t += 128;
            b2_compress(s, s->buf, 0);
            s->n = 0;
        }
        size_t k = 128 - s->n;
        if (k > len) k = len;
        memcpy(s->buf + s->n, in, k);
        s->n += k;
        in += k;
        len -= k;
    }
}

static inline uint64_t b2_final(b2_state* s) {
    s->t += s->n;
    memset(s->buf + s->n, 0, 128 - s->n);
    if (s->t <= 16)
        b2_compress_short(s, s->buf);
    else
        b2_compress(s, s->buf, 1);
    return s->h[0];
}

#endif
