/* The scanning of stream_logreg/_json.pyx: keys eight bytes at a time, and JSON numbers read with the
 * vendored fast_float
 * (vendor/fast_float at the repository root, MIT/Apache-2.0): its tokenizer (eight digits at a time) and its
 * correctly rounded conversion (Clinger's fast path, Eisel-Lemire, the exact fallback), as
 * fast_float::from_chars_advanced does them, plus the rules of JSON that from_chars does not apply. */
#ifndef STREAM_LOGREG_JSON_H
#define STREAM_LOGREG_JSON_H
#include <stdint.h>
#include <string.h>
#include "vendor/fast_float/fast_float_all.h"

/* The JSON number at p (the text ends at pend): returns the end of the number and sets *out (and *integer:
 * no fraction and no exponent), or returns NULL if p does not start with a JSON number this accepts:
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? whose double is finite, an integer of at most 18 digits
 * (its exact value converted as Python's float(int) does: -0 is the int 0, so +0.0). A malformed exponent
 * ("1e", "1e+") ends the number before the "e", which the caller then refuses as the next byte. */
static inline const char* sl_json_number(const char* p, const char* pend, double* out, int* integer) {
    using namespace fast_float;
    if (p == pend || !(*p == '-' || (*p >= '0' && *p <= '9'))) {
        return NULL;  /* no "inf", "nan", ".5", "+1" */
    }
    parsed_number_string pns = parse_number_string(p, pend, parse_options{chars_format::general});
    if (!pns.valid || pns.integer.len() == 0) {
        return NULL;  /* "-", "-.5" */
    }
    if (pns.integer.len() > 1 && pns.integer[0] == '0') {
        return NULL;  /* "01" */
    }
    if (pns.fraction.ptr != nullptr && pns.fraction.len() == 0) {
        return NULL;  /* "1." */
    }
    *integer = pns.fraction.ptr == nullptr && pns.lastmatch == pns.integer.ptr + pns.integer.len();
    if (*integer) {
        if (pns.integer.len() > 18) {
            return NULL;  /* orjson may read it as a float, or as an int beyond 64 bits */
        }
        int64_t v = (int64_t) pns.mantissa;
        *out = (double) (pns.negative ? -v : v);
        return pns.lastmatch;
    }
    double value;
    if (binary_format<double>::min_exponent_fast_path() <= pns.exponent
            && pns.exponent <= binary_format<double>::max_exponent_fast_path() && !pns.too_many_digits
            && detail::rounds_to_nearest() && pns.mantissa <= binary_format<double>::max_mantissa_fast_path()) {
        value = double(pns.mantissa);
        if (pns.exponent < 0) { value = value / binary_format<double>::exact_power_of_ten(-pns.exponent); }
        else { value = value * binary_format<double>::exact_power_of_ten(pns.exponent); }
        if (pns.negative) { value = -value; }
    } else {
        adjusted_mantissa am = compute_float<binary_format<double>>(pns.exponent, pns.mantissa);
        if (pns.too_many_digits && am.power2 >= 0) {
            if (am != compute_float<binary_format<double>>(pns.exponent, pns.mantissa + 1)) {
                am = compute_error<binary_format<double>>(pns.exponent, pns.mantissa);
            }
        }
        if (am.power2 < 0) { am = digit_comp<double>(pns, am); }
        to_float(pns.negative, am, value);
    }
    if (!std::isfinite(value)) {
        return NULL;
    }
    *out = value;
    return pns.lastmatch;
}

static const uint64_t SL_ONES = 0x0101010101010101ULL, SL_HIGHS = 0x8080808080808080ULL;
static const uint64_t SL_MUL = 0x9E3779B97F4A7C15ULL;

/* Whether a byte of the word v is a quote, a backslash, a control character (< 0x20) or not ASCII: exact
 * (the classic "has a zero byte" test, whose answer has no false positive). */
static inline int sl_special(uint64_t v) {
    uint64_t q = v ^ (SL_ONES * '"'), b = v ^ (SL_ONES * '\\');
    uint64_t hits = ((q - SL_ONES) & ~q) | ((b - SL_ONES) & ~b) | ((v - SL_ONES * 0x20) & ~v) | v;
    return (hits & SL_HIGHS) != 0;
}

/* p is past an opening quote, the text ends at end (a NUL follows it): the closing quote of a string of
 * printable ASCII without escapes (0x20..0x7f but the quote and the backslash), and its hash in *h; NULL
 * for any other string. The hash mixes the key's whole words, then its last bytes (zero-padded): the same
 * for the same bytes wherever they are. */
static inline const unsigned char* sl_key(const unsigned char* p, const unsigned char* end, uint64_t* h) {
    uint64_t x = 0, v, tail = 0;
    int k = 0;
    while (end - p >= 8) {
        memcpy(&v, p, 8);
        if (sl_special(v)) {
            break;
        }
        x = (x ^ v) * SL_MUL;
        p += 8;
    }
    for (;; p++, k++) {  /* fewer than 8 bytes to the quote, or to the end of the text */
        unsigned char c = *p;
        if (c == '"') {
            x = (x ^ tail ^ ((uint64_t) k << 59)) * SL_MUL;
            *h = x ^ (x >> 31);
            return p;
        }
        if (c < 0x20 || c >= 0x80 || c == '\\' || k == 8) {
            return NULL;
        }
        tail |= (uint64_t) c << (8 * k);
    }
}

/* Whether the n bytes at a and b are equal. */
static inline int sl_equal(const void* a, const void* b, Py_ssize_t n) {
    const unsigned char *x = (const unsigned char*) a, *y = (const unsigned char*) b;
    uint64_t u, w;
    while (n >= 8) {
        memcpy(&u, x, 8);
        memcpy(&w, y, 8);
        if (u != w) {
            return 0;
        }
        x += 8, y += 8, n -= 8;
    }
    while (n > 0) {
        if (*x++ != *y++) {
            return 0;
        }
        n--;
    }
    return 1;
}
#endif
