/* The record seals' hot path in C: the canonical bytes of a batch of rows, their leaves
 * and the Merkle root over them (modelyard.audit._seals defines all three; it is the
 * specification, and the fallback where this module is not built).
 *
 * A row is encoded here only when its bytes are certain to equal what ``array_bytes``
 * writes through orjson: typed fields of exactly their type (or None), floats that are 0
 * or from 1e-4 to 1e16 in magnitude (written as ``repr``, which orjson's shortest form
 * equals in that range), the time an aware UTC datetime with microseconds, untyped
 * fields str, int (64 bits), bool or None, strings valid UTF-8. Any other row is left to
 * Python, by its index in the batch: the leaves are the same either way.
 *
 * The rows are read with the GIL held; the hashing (SHA-256 by OpenSSL, RFC 9162 leaves
 * and nodes) runs with it released, so that the other threads of a server go on.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <openssl/evp.h>
#include <math.h>
#include <string.h>

#define HASH 32

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int grow(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->data, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const char *s, Py_ssize_t n) {
    if (grow(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* 0: written; 1: not this module's to write (the row goes to Python); -1: an error set. */
enum { OK = 0, FALLBACK = 1, FAILED = -1 };

static int put_str(Buf *b, PyObject *v) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) { /* a lone surrogate: Python decides */
        PyErr_Clear();
        return FALLBACK;
    }
    if (grow(b, 2 + 6 * n) < 0) { /* each byte at most \u00XX */
        return FAILED;
    }
    char *out = b->data + b->len;
    *out++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (c >= 0x20) {
            *out++ = (char)c;
        } else {
            *out++ = '\\';
            switch (c) {
            case '\b': *out++ = 'b'; break;
            case '\t': *out++ = 't'; break;
            case '\n': *out++ = 'n'; break;
            case '\f': *out++ = 'f'; break;
            case '\r': *out++ = 'r'; break;
            default: /* \u00XX, lower case as orjson writes it */
                *out++ = 'u';
                *out++ = '0';
                *out++ = '0';
                *out++ = "0123456789abcdef"[c >> 4];
                *out++ = "0123456789abcdef"[c & 15];
            }
        }
    }
    *out++ = '"';
    b->len = out - b->data;
    return OK;
}

static int put_int(Buf *b, PyObject *v) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {
        return FALLBACK;
    }
    if (x == -1 && PyErr_Occurred()) {
        return FAILED;
    }
    char tmp[24];
    char *end = tmp + sizeof tmp, *p = end;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (x < 0) {
        *--p = '-';
    }
    return put(b, p, end - p) < 0 ? FAILED : OK;
}

/* ``n`` as ``width`` decimal digits, zero-padded, at ``out``. */
static void digits(char *out, int n, int width) {
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + n % 10);
        n /= 10;
    }
}

static int put_float(Buf *b, PyObject *v) {
    double x = PyFloat_AS_DOUBLE(v);
    double a = fabs(x);
    if (!(x == 0.0 || (a >= 1e-4 && a < 1e16))) {
        return FALLBACK;
    }
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) {
        return FAILED;
    }
    int rc = put(b, s, (Py_ssize_t)strlen(s)) < 0 ? FAILED : OK;
    PyMem_Free(s);
    return rc;
}

static int put_time(Buf *b, PyObject *v) {
    if (!PyDateTime_CheckExact(v) || PyDateTime_DATE_GET_TZINFO(v) != PyDateTime_TimeZone_UTC) {
        return FALLBACK;
    }
    int year = PyDateTime_GET_YEAR(v), micro = PyDateTime_DATE_GET_MICROSECOND(v);
    if (micro == 0 || year < 1000) { /* orjson leaves out .000000; the padding of years */
        return FALLBACK;
    }
    char tmp[] = "\"YYYY-MM-DDTHH:MM:SS.uuuuuu+00:00\"";
    digits(tmp + 1, year, 4);
    digits(tmp + 6, PyDateTime_GET_MONTH(v), 2);
    digits(tmp + 9, PyDateTime_GET_DAY(v), 2);
    digits(tmp + 12, PyDateTime_DATE_GET_HOUR(v), 2);
    digits(tmp + 15, PyDateTime_DATE_GET_MINUTE(v), 2);
    digits(tmp + 18, PyDateTime_DATE_GET_SECOND(v), 2);
    digits(tmp + 21, micro, 6);
    return put(b, tmp, sizeof tmp - 1) < 0 ? FAILED : OK;
}

/* kinds: one letter a field: f float, i int, b bool, t the time, s str/int/bool (untyped) */
static int put_value(Buf *b, PyObject *v, char kind) {
    if (v == Py_None) {
        return kind == 't' ? FALLBACK : (put(b, "null", 4) < 0 ? FAILED : OK);
    }
    if (kind == 't') {
        return put_time(b, v);
    }
    if (PyBool_Check(v)) {
        if (kind != 'b' && kind != 's') {
            return FALLBACK;
        }
        return put(b, v == Py_True ? "true" : "false", v == Py_True ? 4 : 5) < 0 ? FAILED : OK;
    }
    switch (kind) {
    case 'f':
        return PyFloat_CheckExact(v) ? put_float(b, v) : FALLBACK;
    case 'i':
        return PyLong_CheckExact(v) ? put_int(b, v) : FALLBACK;
    case 'b':
        return FALLBACK;
    default:
        if (PyUnicode_CheckExact(v)) {
            return put_str(b, v);
        }
        if (PyLong_CheckExact(v)) {
            return put_int(b, v);
        }
        return FALLBACK;
    }
}

/* One row's bytes, after a 0x00 byte (the leaf's prefix): OK, FALLBACK (nothing kept) or
 * FAILED. */
static int put_row(Buf *b, PyObject *row, PyObject *fields, const char *kinds,
                   PyObject *version, Py_ssize_t *time_at) {
    if (!PyDict_CheckExact(row)) {
        return FALLBACK;
    }
    Py_ssize_t start = b->len;
    if (put(b, "\0[", 2) < 0 || put_int(b, version) != OK) {
        return FAILED;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *v = PyDict_GetItemWithError(row, PyTuple_GET_ITEM(fields, i));
        int rc;
        if (v == NULL) {
            rc = PyErr_Occurred() ? FAILED : FALLBACK; /* a missing field: Python says which */
        } else if (put(b, ",", 1) < 0) {
            rc = FAILED;
        } else {
            if (kinds[i] == 't') {
                *time_at = b->len + 1; /* after its quote */
            }
            rc = put_value(b, v, kinds[i]);
        }
        if (rc != OK) {
            b->len = start;
            return rc;
        }
    }
    return put(b, "]", 1) < 0 ? FAILED : OK;
}

typedef struct {
    Buf buf;
    Py_ssize_t *at; /* each row's start in buf, -1: left to Python */
    Py_ssize_t *len;
    Py_ssize_t *time_at; /* where its time's text starts in buf (TIME_LEN characters) */
    Py_ssize_t rows;
} Batch;

#define TIME_LEN 32 /* YYYY-MM-DDTHH:MM:SS.ffffff+00:00 */

static void batch_free(Batch *batch) {
    PyMem_Free(batch->buf.data);
    PyMem_Free(batch->at);
    PyMem_Free(batch->len);
    PyMem_Free(batch->time_at);
}

static int encode_rows(Batch *batch, PyObject *args) {
    PyObject *rows, *fields;
    const char *kinds;
    Py_ssize_t nkinds;
    PyObject *version;
    memset(batch, 0, sizeof *batch);
    if (!PyArg_ParseTuple(args, "O!O!s#O!", &PyList_Type, &rows, &PyTuple_Type, &fields, &kinds,
                          &nkinds, &PyLong_Type, &version)) {
        return -1;
    }
    if (nkinds != PyTuple_GET_SIZE(fields)) {
        PyErr_SetString(PyExc_ValueError, "one kind a field");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(rows);
    batch->rows = n;
    batch->at = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    batch->len = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    batch->time_at = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    if (batch->at == NULL || batch->len == NULL || batch->time_at == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t start = batch->buf.len;
        batch->time_at[i] = -1;
        int rc = put_row(&batch->buf, PyList_GET_ITEM(rows, i), fields, kinds, version,
                         &batch->time_at[i]);
        if (rc == FAILED) {
            return -1;
        }
        batch->at[i] = rc == OK ? start : -1;
        batch->len[i] = rc == OK ? batch->buf.len - start : 0;
    }
    return 0;
}

/* SHA-256, fetched once (an implicit fetch on every digest costs more than the hashing) */
static EVP_MD *SHA256_MD = NULL;

/* One digest with ``ctx`` (a context per call of this module, reused for its digests). */
static int sha256(EVP_MD_CTX *ctx, const void *data, size_t n, unsigned char *out) {
    return EVP_DigestInit_ex(ctx, SHA256_MD, NULL) && EVP_DigestUpdate(ctx, data, n)
                   && EVP_DigestFinal_ex(ctx, out, NULL)
               ? 0
               : -1;
}

/* encode(rows, fields, kinds, version) -> list of each row's canonical bytes, or None
 * where the row is left to Python. */
static PyObject *encode(PyObject *Py_UNUSED(self), PyObject *args) {
    Batch batch;
    if (encode_rows(&batch, args) < 0) {
        batch_free(&batch);
        return NULL;
    }
    PyObject *out = PyList_New(batch.rows);
    for (Py_ssize_t i = 0; out != NULL && i < batch.rows; i++) {
        PyObject *item;
        if (batch.at[i] < 0) {
            item = Py_NewRef(Py_None);
        } else { /* without the leaf's 0x00 */
            item = PyBytes_FromStringAndSize(batch.buf.data + batch.at[i] + 1, batch.len[i] - 1);
            if (item == NULL) {
                Py_CLEAR(out);
                break;
            }
        }
        PyList_SET_ITEM(out, i, item);
    }
    batch_free(&batch);
    return out;
}

/* leaves(rows, fields, kinds, version) -> (the leaves, 32 bytes a row, in order; the
 * indexes of the rows left to Python, whose 32 bytes are zero; each row's time as
 * format_time writes it, None for the rows left to Python) */
static PyObject *leaves(PyObject *Py_UNUSED(self), PyObject *args) {
    Batch batch;
    if (encode_rows(&batch, args) < 0) {
        batch_free(&batch);
        return NULL;
    }
    PyObject *blob = PyBytes_FromStringAndSize(NULL, HASH * batch.rows);
    PyObject *left = PyList_New(0);
    PyObject *times = PyList_New(batch.rows);
    if (blob == NULL || left == NULL || times == NULL) {
        goto fail;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(blob);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int bad = ctx == NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < batch.rows && !bad; i++) {
        if (batch.at[i] < 0) {
            memset(out + HASH * i, 0, HASH);
        } else if (sha256(ctx, batch.buf.data + batch.at[i], batch.len[i], out + HASH * i) < 0) {
            bad = 1;
        }
    }
    Py_END_ALLOW_THREADS
    EVP_MD_CTX_free(ctx);
    if (bad) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's SHA-256 failed");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < batch.rows; i++) {
        PyObject *time;
        if (batch.at[i] < 0) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(left, index) < 0) {
                Py_XDECREF(index);
                goto fail;
            }
            Py_DECREF(index);
            time = Py_NewRef(Py_None);
        } else {
            time = PyUnicode_FromStringAndSize(batch.buf.data + batch.time_at[i], TIME_LEN);
            if (time == NULL) {
                goto fail;
            }
        }
        PyList_SET_ITEM(times, i, time);
    }
    batch_free(&batch);
    PyObject *result = PyTuple_Pack(3, blob, left, times);
    Py_DECREF(blob);
    Py_DECREF(left);
    Py_DECREF(times);
    return result;
fail:
    batch_free(&batch);
    Py_XDECREF(blob);
    Py_XDECREF(left);
    Py_XDECREF(times);
    return NULL;
}

/* root(leaves) -> the RFC 9162 tree head of the concatenated 32-byte leaves (at least
 * one), built level by level with an odd last node carried up, as _merkle.merkle_root. */
static PyObject *root(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t n = view.len / HASH;
    if (n == 0 || view.len % HASH) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "leaves: a positive multiple of 32 bytes");
        return NULL;
    }
    unsigned char *level = PyMem_Malloc(view.len);
    if (level == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    memcpy(level, view.buf, view.len);
    PyBuffer_Release(&view);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int bad = ctx == NULL;
    Py_BEGIN_ALLOW_THREADS
    unsigned char node[1 + 2 * HASH];
    node[0] = 0x01;
    while (n > 1 && !bad) {
        Py_ssize_t pairs = n / 2;
        for (Py_ssize_t i = 0; i < pairs; i++) {
            memcpy(node + 1, level + 2 * HASH * i, 2 * HASH);
            if (sha256(ctx, node, sizeof node, level + HASH * i) < 0) {
                bad = 1;
                break;
            }
        }
        if (n % 2) { /* the odd last one, carried up */
            memmove(level + HASH * pairs, level + HASH * (n - 1), HASH);
        }
        n = pairs + n % 2;
    }
    Py_END_ALLOW_THREADS
    EVP_MD_CTX_free(ctx);
    PyObject *result = bad ? NULL : PyBytes_FromStringAndSize((char *)level, HASH);
    if (bad) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's SHA-256 failed");
    }
    PyMem_Free(level);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, "Each row's canonical bytes, or None: left to Python."},
    {"leaves", leaves, METH_VARARGS, "The rows' leaves, and the rows left to Python."},
    {"root", root, METH_O, "The Merkle tree head of concatenated leaves."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastseal", "Record seals' hot path in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastseal(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
    SHA256_MD = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (SHA256_MD == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    return PyModule_Create(&module);
}
