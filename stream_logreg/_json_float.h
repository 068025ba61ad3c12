/* The one entry of the vendored fast_float (stream_logreg/vendor/fast_float, MIT/Apache-2.0) that
 * stream_logreg/_json.pyx uses: a JSON number token -> the correctly rounded double. */
#ifndef STREAM_LOGREG_JSON_FLOAT_H
#define STREAM_LOGREG_JSON_FLOAT_H
#include "vendor/fast_float/fast_float_all.h"

/* 1 and *out set if the whole of [first, last) is one number, else 0. */
static inline int sl_parse_double(const char* first, const char* last, double* out) {
    fast_float::from_chars_result r = fast_float::from_chars(first, last, *out);
    return r.ec == std::errc() && r.ptr == last;
}
#endif
