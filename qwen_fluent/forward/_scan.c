/*
 * qwen_fluent.forward._scan: a PackedForward payload straight into columns.
 *
 * The optional accelerator behind qwen_fluent.forward.scan (read that module's
 * docstring first). One C pass over the payload's [time, record] entries that
 * checks each entry's frame and time, and reads each record map by a schema
 * the caller gives (key -> kind and slot), without building a Python object
 * per record:
 *
 *   - MEASURE keys: int, float or nil, written as float64 into an n x M column
 *     (NaN for nil or absent), as numpy's float64 conversion of the Python
 *     value would give;
 *   - LABEL keys: str, int, float or nil; their msgpack bytes, in slot order,
 *     plus the KEYED map's bytes, make the record's label key; records are
 *     numbered by distinct key (codes), each distinct key's bytes and first
 *     record handed back;
 *   - STAMP key: the same numbering for its value's bytes;
 *   - SPAN keys: str, int, float or nil; where each one's bytes lie;
 *   - KEYED key: any value (a map); its bytes join the label key;
 *   - SKIP keys: any value.
 *
 * It REFUSES (returns None, having changed nothing) anything it is not sure to
 * read exactly as the reference path would: an entry that is not a 2-array, a
 * time that is not an EventTime (fixext 8, type 0) or is a group marker or
 * after 2106 (first seconds byte 0xff), a record that is not a map, a key that
 * is not a str or not in the schema, a key twice, a value of a type its kind
 * does not take, a string that is not valid UTF-8 anywhere in the record, a
 * string longer than max_string bytes, a KEYED value longer than max_keyed
 * bytes, nesting deeper than MAX_DEPTH, more than max_entries entries, an
 * entry count other than the one expected, or a payload cut short. A refused
 * payload goes the pure-Python way, which stays the reference; a refusal is
 * never an error. Bounds: every read is checked against the payload's end
 * before it happens; the working memory is O(entries) and freed before return.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

enum { K_SKIP = 0, K_MEASURE = 1, K_LABEL = 2, K_STAMP = 3, K_SPAN = 4, K_KEYED = 5 };

/* Nesting a skipped value may have. msgspec's own limit is deeper; a record nested past this is
   refused here and read by the reference path, so the figure only has to be above real records'
   (Fluent Bit's kubernetes map: 3 levels). */
#define MAX_DEPTH 32
/* Keys in a schema, and measurement and label slots: the request record has 24, 6 and 9. */
#define MAX_FIELDS 64
#define MAX_SLOTS 16

typedef struct {
    const uint8_t *name;
    Py_ssize_t len;
    int kind;
    int slot;
} Field;

typedef struct {
    PyObject_HEAD
    PyObject *names;  /* the key bytes, kept alive for Field.name */
    Field fields[MAX_FIELDS];
    int nfields;
    int nmeasure;
    int nlabel;
    int nspan;
    Py_ssize_t max_string;
    Py_ssize_t max_keyed;
} Scanner;

/* ---- a growable buffer --------------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) {
        if (cap > ((size_t)PY_SSIZE_T_MAX) / 2) return -1;
        cap *= 2;
    }
    uint8_t *d = PyMem_Realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- interning byte strings: code per distinct value, in order of first appearance --------- */

typedef struct {
    Buf arena;        /* the distinct values' bytes, back to back */
    size_t *off;      /* per code: where its bytes start in arena, and how many */
    size_t *len;
    Py_ssize_t *first; /* per code: the first record that had it */
    uint64_t *hash;
    Py_ssize_t count, cap;
    Py_ssize_t *slots; /* open addressing: code + 1, 0 for empty */
    size_t mask;
} Intern;

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    /* A multiply-xorshift over 8-byte words; collisions are settled by memcmp. */
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    if (n) memcpy(&w, p, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 32;
    return h;
}

static int intern_init(Intern *t, Py_ssize_t expected) {
    memset(t, 0, sizeof(*t));
    size_t cap = 16;
    while (cap < (size_t)expected * 2) cap *= 2;
    t->slots = PyMem_Calloc(cap, sizeof(Py_ssize_t));
    if (!t->slots) return -1;
    t->mask = cap - 1;
    return 0;
}

static void intern_free(Intern *t) {
    PyMem_Free(t->arena.data);
    PyMem_Free(t->off);
    PyMem_Free(t->len);
    PyMem_Free(t->first);
    PyMem_Free(t->hash);
    PyMem_Free(t->slots);
}

static int intern_grow_slots(Intern *t) {
    size_t cap = (t->mask + 1) * 2;
    Py_ssize_t *slots = PyMem_Calloc(cap, sizeof(Py_ssize_t));
    if (!slots) return -1;
    for (Py_ssize_t c = 0; c < t->count; c++) {
        size_t i = (size_t)t->hash[c] & (cap - 1);
        while (slots[i]) i = (i + 1) & (cap - 1);
        slots[i] = c + 1;
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->mask = cap - 1;
    return 0;
}

/* The code of the value p[0:n]; a new one (first seen at record `record`) if unseen; -1 on no memory. */
static Py_ssize_t intern(Intern *t, const uint8_t *p, size_t n, Py_ssize_t record) {
    uint64_t h = hash_bytes(p, n);
    size_t i = (size_t)h & t->mask;
    for (;;) {
        Py_ssize_t s = t->slots[i];
        if (!s) break;
        Py_ssize_t c = s - 1;
        if (t->hash[c] == h && t->len[c] == n && memcmp(t->arena.data + t->off[c], p, n) == 0) return c;
        i = (i + 1) & t->mask;
    }
    if (t->count == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 8;
        size_t *off = PyMem_Realloc(t->off, cap * sizeof(size_t));
        if (!off) return -1;
        t->off = off;
        size_t *len = PyMem_Realloc(t->len, cap * sizeof(size_t));
        if (!len) return -1;
        t->len = len;
        Py_ssize_t *first = PyMem_Realloc(t->first, cap * sizeof(Py_ssize_t));
        if (!first) return -1;
        t->first = first;
        uint64_t *hash = PyMem_Realloc(t->hash, cap * sizeof(uint64_t));
        if (!hash) return -1;
        t->hash = hash;
        t->cap = cap;
    }
    Py_ssize_t c = t->count;
    t->off[c] = t->arena.len;
    t->len[c] = n;
    t->first[c] = record;
    t->hash[c] = h;
    if (buf_put(&t->arena, p, n) < 0) return -1;
    t->count++;
    t->slots[i] = c + 1;
    if ((size_t)t->count * 2 > t->mask + 1 && intern_grow_slots(t) < 0) return -1;
    return c;
}

/* ---- msgpack reading ------------------------------------------------------------------------ */

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* Strict UTF-8 as Python's decoder takes it: no overlong forms, no surrogates, nothing past U+10FFFF. */
static int utf8_ok(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* eight ASCII bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = p[i];
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (p[i + 1] & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[i + 1] < 0xA0) return 0;  /* overlong */
            if (c == 0xED && p[i + 1] >= 0xA0) return 0; /* surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (p[i + 1] & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80 || (p[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && p[i + 1] < 0x90) return 0; /* overlong */
            if (c == 0xF4 && p[i + 1] >= 0x90) return 0; /* past U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* What one msgpack value's head says. */
typedef enum { T_NIL, T_BOOL, T_INT, T_UINT, T_FLOAT, T_STR, T_BIN, T_ARRAY, T_MAP, T_EXT, T_BAD } Type;

typedef struct {
    Type type;
    size_t head;     /* bytes of the head (type byte and length or value) */
    size_t body;     /* bytes after the head: str/bin/ext data (ext: type byte included) */
    uint64_t count;  /* array or map: elements (a map: pairs) */
    int64_t i;       /* T_INT */
    uint64_t u;      /* T_UINT */
    double f;        /* T_FLOAT */
} Head;

/* Read the head at p (n bytes available). 0 if it is cut short or invalid. */
static int read_head(const uint8_t *p, size_t n, Head *h) {
    if (n < 1) return 0;
    uint8_t c = p[0];
    h->head = 1;
    h->body = 0;
    h->count = 0;
    if (c <= 0x7F) { h->type = T_UINT; h->u = c; return 1; }
    if (c >= 0xE0) { h->type = T_INT; h->i = (int8_t)c; return 1; }
    if (c <= 0x8F) { h->type = T_MAP; h->count = c & 0x0F; return 1; }
    if (c <= 0x9F) { h->type = T_ARRAY; h->count = c & 0x0F; return 1; }
    if (c <= 0xBF) { h->type = T_STR; h->body = c & 0x1F; return 1; }
    switch (c) {
    case 0xC0: h->type = T_NIL; return 1;
    case 0xC2: case 0xC3: h->type = T_BOOL; return 1;
    case 0xC4: if (n < 2) return 0; h->type = T_BIN; h->head = 2; h->body = p[1]; return 1;
    case 0xC5: if (n < 3) return 0; h->type = T_BIN; h->head = 3; h->body = be16(p + 1); return 1;
    case 0xC6: if (n < 5) return 0; h->type = T_BIN; h->head = 5; h->body = be32(p + 1); return 1;
    case 0xC7: if (n < 2) return 0; h->type = T_EXT; h->head = 2; h->body = (size_t)p[1] + 1; return 1;
    case 0xC8: if (n < 3) return 0; h->type = T_EXT; h->head = 3; h->body = (size_t)be16(p + 1) + 1; return 1;
    case 0xC9: if (n < 5) return 0; h->type = T_EXT; h->head = 5; h->body = (size_t)be32(p + 1) + 1; return 1;
    case 0xCA: {
        if (n < 5) return 0;
        uint32_t bits = be32(p + 1);
        float f;
        memcpy(&f, &bits, 4);
        h->type = T_FLOAT; h->head = 5; h->f = (double)f; return 1;
    }
    case 0xCB: {
        if (n < 9) return 0;
        uint64_t bits = be64(p + 1);
        double d;
        memcpy(&d, &bits, 8);
        h->type = T_FLOAT; h->head = 9; h->f = d; return 1;
    }
    case 0xCC: if (n < 2) return 0; h->type = T_UINT; h->head = 2; h->u = p[1]; return 1;
    case 0xCD: if (n < 3) return 0; h->type = T_UINT; h->head = 3; h->u = be16(p + 1); return 1;
    case 0xCE: if (n < 5) return 0; h->type = T_UINT; h->head = 5; h->u = be32(p + 1); return 1;
    case 0xCF: if (n < 9) return 0; h->type = T_UINT; h->head = 9; h->u = be64(p + 1); return 1;
    case 0xD0: if (n < 2) return 0; h->type = T_INT; h->head = 2; h->i = (int8_t)p[1]; return 1;
    case 0xD1: if (n < 3) return 0; h->type = T_INT; h->head = 3; h->i = (int16_t)be16(p + 1); return 1;
    case 0xD2: if (n < 5) return 0; h->type = T_INT; h->head = 5; h->i = (int32_t)be32(p + 1); return 1;
    case 0xD3: if (n < 9) return 0; h->type = T_INT; h->head = 9; h->i = (int64_t)be64(p + 1); return 1;
    case 0xD4: h->type = T_EXT; h->body = 2; return 1;
    case 0xD5: h->type = T_EXT; h->body = 3; return 1;
    case 0xD6: h->type = T_EXT; h->body = 5; return 1;
    case 0xD7: h->type = T_EXT; h->body = 9; return 1;
    case 0xD8: h->type = T_EXT; h->body = 17; return 1;
    case 0xD9: if (n < 2) return 0; h->type = T_STR; h->head = 2; h->body = p[1]; return 1;
    case 0xDA: if (n < 3) return 0; h->type = T_STR; h->head = 3; h->body = be16(p + 1); return 1;
    case 0xDB: if (n < 5) return 0; h->type = T_STR; h->head = 5; h->body = be32(p + 1); return 1;
    case 0xDC: if (n < 3) return 0; h->type = T_ARRAY; h->head = 3; h->count = be16(p + 1); return 1;
    case 0xDD: if (n < 5) return 0; h->type = T_ARRAY; h->head = 5; h->count = be32(p + 1); return 1;
    case 0xDE: if (n < 3) return 0; h->type = T_MAP; h->head = 3; h->count = be16(p + 1); return 1;
    case 0xDF: if (n < 5) return 0; h->type = T_MAP; h->head = 5; h->count = be32(p + 1); return 1;
    default: h->type = T_BAD; return 0; /* 0xC1: never used */
    }
}

/* Bytes of the whole value at p, checked (strings valid UTF-8, nesting bounded); 0 if refused. */
static size_t skip_value(const uint8_t *p, size_t n, int depth) {
    Head h;
    if (!read_head(p, n, &h)) return 0;
    if (h.head > n || h.body > n - h.head) return 0;
    size_t used = h.head + h.body;
    if (h.type == T_STR && !utf8_ok(p + h.head, h.body)) return 0;
    if (h.type == T_ARRAY || h.type == T_MAP) {
        if (depth >= MAX_DEPTH) return 0;
        uint64_t items = h.type == T_MAP ? h.count * 2 : h.count;
        if (items > n - used) return 0; /* every item takes at least one byte */
        for (uint64_t k = 0; k < items; k++) {
            size_t m = skip_value(p + used, n - used, depth + 1);
            if (!m) return 0;
            used += m;
        }
    }
    return used;
}

/* ---- ISO 8601 stamps ------------------------------------------------------------------------ */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int digits(const uint8_t *p, int n, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* Seconds since the epoch of the commonest stamp forms, as Python's datetime reads them (a naive one
   taken as UTC): YYYY-MM-DDTHH:MM:SS, then optionally '.' and 1 to 9 digits (microseconds: the first
   six, padded), then nothing, 'Z' or '+00:00'; from 1970 to 2255. 0 for anything else, which the caller
   leaves to Python (qwen_fluent.records.values.iso_seconds, the reference). The figure is the
   microseconds since the epoch divided by 1e6, one correctly rounded division, which is what
   datetime.timestamp() computes for an aware datetime (timedelta.total_seconds). */
static int iso_stamp(const uint8_t *p, size_t n, double *out) {
    unsigned year, month, day, hour, minute, second, fraction = 0;
    if (n < 19 || n > 35) return 0;
    if (p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':' || p[16] != ':') return 0;
    if (!digits(p, 4, &year) || !digits(p + 5, 2, &month) || !digits(p + 8, 2, &day) ||
        !digits(p + 11, 2, &hour) || !digits(p + 14, 2, &minute) || !digits(p + 17, 2, &second))
        return 0;
    size_t i = 19;
    if (i < n && p[i] == '.') {
        size_t start = ++i;
        while (i < n && p[i] >= '0' && p[i] <= '9') i++;
        size_t count = i - start;
        if (count < 1 || count > 9) return 0;
        for (size_t k = 0; k < 6; k++) fraction = fraction * 10 + (k < count ? (unsigned)(p[start + k] - '0') : 0);
    }
    if (i < n) {
        if (n - i == 1 && p[i] == 'Z') i += 1;
        else if (n - i == 6 && memcmp(p + i, "+00:00", 6) == 0) i += 6;
        else return 0;
    }
    static const unsigned month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (year < 1970 || month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day < 1 || day > month_days[month - 1] + (month == 2 && leap)) return 0;
    int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    int64_t micros = seconds * 1000000 + fraction;
    /* Exact as a double only below 2^53 (the year 2255): Python divides the exact integers. */
    if (micros >= ((int64_t)1 << 53)) return 0;
    *out = (double)micros / 1e6;
    return 1;
}

/* ---- the scanner ---------------------------------------------------------------------------- */

static void Scanner_dealloc(Scanner *self) {
    Py_XDECREF(self->names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"schema", "max_string", "max_keyed", NULL};
    PyObject *schema;
    Py_ssize_t max_string, max_keyed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onn", kwlist, &schema, &max_string, &max_keyed)) return -1;
    PyObject *seq = PySequence_Tuple(schema);
    if (!seq) return -1;
    Py_ssize_t nfields = PyTuple_GET_SIZE(seq);
    if (nfields > MAX_FIELDS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many fields in the schema");
        return -1;
    }
    PyObject *names = PyTuple_New(nfields);
    if (!names) { Py_DECREF(seq); return -1; }
    int counts[6] = {0, 0, 0, 0, 0, 0};
    for (Py_ssize_t k = 0; k < nfields; k++) {
        PyObject *name;
        int kind, slot;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(seq, k), "Sii", &name, &kind, &slot)) goto fail;
        if (kind < K_SKIP || kind > K_KEYED || slot < 0 || slot >= MAX_SLOTS) {
            PyErr_SetString(PyExc_ValueError, "a schema field has an unknown kind or slot");
            goto fail;
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            if (self->fields[j].len == PyBytes_GET_SIZE(name) &&
                memcmp(self->fields[j].name, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)) == 0) {
                PyErr_SetString(PyExc_ValueError, "a key appears twice in the schema");
                goto fail;
            }
        }
        Py_INCREF(name);
        PyTuple_SET_ITEM(names, k, name);
        self->fields[k].name = (const uint8_t *)PyBytes_AS_STRING(name);
        self->fields[k].len = PyBytes_GET_SIZE(name);
        self->fields[k].kind = kind;
        self->fields[k].slot = slot;
        if (slot + 1 > counts[kind]) counts[kind] = slot + 1;
    }
    if (counts[K_STAMP] > 1 || counts[K_KEYED] > 1) {
        PyErr_SetString(PyExc_ValueError, "at most one STAMP and one KEYED field");
        goto fail;
    }
    Py_DECREF(seq);
    Py_XSETREF(self->names, names);
    self->nfields = (int)nfields;
    self->nmeasure = counts[K_MEASURE];
    self->nlabel = counts[K_LABEL];
    self->nspan = counts[K_SPAN];
    self->max_string = max_string;
    self->max_keyed = max_keyed;
    return 0;
fail:
    Py_DECREF(seq);
    Py_DECREF(names);
    return -1;
}

/* Where one record's values lie, by slot (offset 0 and length 0: absent). */
typedef struct {
    size_t label_off[MAX_SLOTS], label_len[MAX_SLOTS];
    size_t span_off[MAX_SLOTS], span_len[MAX_SLOTS];
    size_t stamp_off, stamp_len, keyed_off, keyed_len;
} Found;

static const uint8_t NIL = 0xC0;

/* Is the value at p (with head h) a scalar a LABEL, STAMP or SPAN field takes: nil, int, float, str? */
static int scalar_ok(const Scanner *s, const uint8_t *p, const Head *h) {
    switch (h->type) {
    case T_NIL: case T_INT: case T_UINT: case T_FLOAT: return 1;
    case T_STR: return (Py_ssize_t)h->body <= s->max_string && utf8_ok(p + h->head, h->body);
    default: return 0;
    }
}

/* The keyed value of the record before, already checked: the same bytes at the same place in the next
   record are the same value, of the same length (msgpack is read from its first byte on, so bytes that
   parsed to a valid value of L bytes once parse to it again), and need no second check. A pod's chunk
   carries one kubernetes map, a few hundred bytes, in every record. */
typedef struct {
    const uint8_t *data;
    size_t len;
} Known;

/* Read one record map at p; fill its measurement row and `found`. Bytes used, 0 if refused. */
static size_t read_record(const Scanner *s, const uint8_t *p, size_t n, double *row, Found *found, const Known *known) {
    Head h;
    if (!read_head(p, n, &h) || h.type != T_MAP) return 0;
    size_t used = h.head;
    if (h.count > (uint64_t)s->nfields) return 0; /* a key twice, or one not in the schema */
    uint64_t seen = 0;
    int next = 0;
    for (int m = 0; m < s->nmeasure; m++) row[m] = NAN;
    memset(found, 0, sizeof(*found));
    for (uint64_t k = 0; k < h.count; k++) {
        Head kh;
        if (!read_head(p + used, n - used, &kh) || kh.type != T_STR) return 0;
        if (kh.head > n - used || kh.body > n - used - kh.head) return 0;
        const uint8_t *key = p + used + kh.head;
        size_t klen = kh.body;
        used += kh.head + kh.body;
        /* Looked up from the field after the last one found: a record's keys come in the schema's
           order (the article's), so the first field tried is most often the one. */
        int f = -1;
        for (int t = 0, j = next; t < s->nfields; t++, j = j + 1 == s->nfields ? 0 : j + 1) {
            if ((size_t)s->fields[j].len == klen && memcmp(s->fields[j].name, key, klen) == 0) { f = j; break; }
        }
        if (f < 0 || (seen >> f) & 1) return 0; /* unknown key (the lean record forbids it), or a key twice */
        seen |= (uint64_t)1 << f;
        next = f + 1 == s->nfields ? 0 : f + 1;
        const Field *field = &s->fields[f];
        const uint8_t *v = p + used;
        size_t avail = n - used;
        Head vh;
        if (!read_head(v, avail, &vh)) return 0;
        size_t vlen;
        switch (field->kind) {
        case K_MEASURE:
            vlen = vh.head;
            if (vlen > avail) return 0;
            if (vh.type == T_UINT) row[field->slot] = (double)vh.u;
            else if (vh.type == T_INT) row[field->slot] = (double)vh.i;
            else if (vh.type == T_FLOAT) row[field->slot] = vh.f;
            else if (vh.type != T_NIL) return 0;
            break;
        case K_LABEL: case K_STAMP: case K_SPAN:
            if (vh.head > avail || vh.body > avail - vh.head) return 0;
            vlen = vh.head + vh.body;
            if (!scalar_ok(s, v, &vh)) return 0;
            if (field->kind == K_LABEL) {
                found->label_off[field->slot] = used;
                found->label_len[field->slot] = vlen;
            } else if (field->kind == K_STAMP) {
                found->stamp_off = used;
                found->stamp_len = vlen;
            } else {
                found->span_off[field->slot] = used;
                found->span_len[field->slot] = vlen;
            }
            break;
        case K_KEYED:
            if (known->len && known->len <= avail && memcmp(v, known->data, known->len) == 0) {
                vlen = known->len;
            } else {
                vlen = skip_value(v, avail, 1);
                if (!vlen || (Py_ssize_t)vlen > s->max_keyed) return 0;
            }
            found->keyed_off = used;
            found->keyed_len = vlen;
            break;
        default: /* K_SKIP */
            vlen = skip_value(v, avail, 1);
            if (!vlen) return 0;
            break;
        }
        used += vlen;
    }
    return used;
}

static PyObject *bytes_of_buf(Buf *b) {
    return PyBytes_FromStringAndSize((const char *)b->data, (Py_ssize_t)b->len);
}

/* Per code: (its bytes, its first record); as two lists. */
static int intern_lists(Intern *t, PyObject **values, PyObject **firsts) {
    *values = PyList_New(t->count);
    *firsts = PyList_New(t->count);
    if (!*values || !*firsts) return -1;
    for (Py_ssize_t c = 0; c < t->count; c++) {
        PyObject *v = PyBytes_FromStringAndSize((const char *)t->arena.data + t->off[c], (Py_ssize_t)t->len[c]);
        if (!v) return -1;
        PyList_SET_ITEM(*values, c, v);
        PyObject *i = PyLong_FromSsize_t(t->first[c]);
        if (!i) return -1;
        PyList_SET_ITEM(*firsts, c, i);
    }
    return 0;
}

PyDoc_STRVAR(Scanner_scan_doc,
"scan(payload, expected, max_entries) -> tuple | None\n\n"
"The payload's records as columns, or None (refused: read it the reference way).\n"
"expected: the entry count the message announced (its size option), or -1 for any.\n"
"The tuple: (n, measures, times, label_codes, label_keys, label_firsts, stamp_codes,\n"
"stamp_values, stamp_seconds, records, spans): measures n x M float64, times n float64 (EventTime\n"
"seconds + nanoseconds / 1e9), codes n int64, records n x 2 int64 (each record's\n"
"start and end in the payload), spans n x S x 2 int64 (start and end, 0 0 if absent),\n"
"stamp_seconds one float64 per stamp value (an ISO 8601 string of the common form read\n"
" as seconds since the epoch; NaN for any other value), all as bytes in native order;\n"
"keys and values as lists of bytes, firsts of ints.");

static PyObject *Scanner_scan(Scanner *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t expected, max_entries;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &expected, &max_entries)) return NULL;
    const uint8_t *p = view.buf;
    size_t n = (size_t)view.len, pos = 0;
    /* The tables are sized for the announced count, but never for more entries than the payload can
       hold (12 bytes each at least): a message announcing a million entries in a few bytes gets none. */
    Py_ssize_t hint = expected > 0 && expected <= max_entries ? expected : 64;
    if (hint > (Py_ssize_t)(n / 12) + 1) hint = (Py_ssize_t)(n / 12) + 1;
    Buf measures = {0}, times = {0}, lcodes = {0}, scodes = {0}, records = {0}, spans = {0}, key = {0};
    Buf stamp_seconds = {0};
    Intern labels, stamps, keyed;
    int li = intern_init(&labels, hint), si = intern_init(&stamps, hint), ki = intern_init(&keyed, 8);
    PyObject *result = NULL, *out = NULL;
    Py_ssize_t count = 0;
    if (li < 0 || si < 0 || ki < 0) { PyErr_NoMemory(); goto done; }
    int nm = self->nmeasure, nl = self->nlabel, ns = self->nspan;
    double row[MAX_SLOTS];
    Found found;
    size_t last_keyed_off = 0, last_keyed_len = (size_t)-1;
    int32_t last_keyed_code = 0;
    while (pos < n) {
        if (count >= max_entries) goto refuse;
        /* [time, record]: a fixarray of 2, an EventTime (fixext 8, type 0) not a group marker. */
        if (n - pos < 12 || p[pos] != 0x92 || p[pos + 1] != 0xD7 || p[pos + 2] != 0x00 || p[pos + 3] == 0xFF)
            goto refuse;
        double t = (double)be32(p + pos + 3) + (double)be32(p + pos + 7) / 1e9;
        size_t start = pos + 11;
        Known known = {last_keyed_len == (size_t)-1 ? NULL : p + last_keyed_off,
                       last_keyed_len == (size_t)-1 ? 0 : last_keyed_len};
        size_t used = read_record(self, p + start, n - start, row, &found, &known);
        if (!used) goto refuse;
        int32_t kc = -1;
        if (found.keyed_len) {
            size_t off = start + found.keyed_off;
            if (found.keyed_len == last_keyed_len && memcmp(p + last_keyed_off, p + off, last_keyed_len) == 0) {
                kc = last_keyed_code;  /* the common case: the same pod as the record before */
            } else {
                Py_ssize_t c = intern(&keyed, p + off, found.keyed_len, count);
                if (c < 0) { PyErr_NoMemory(); goto done; }
                kc = (int32_t)c;
                last_keyed_off = off;
                last_keyed_len = found.keyed_len;
                last_keyed_code = kc;
            }
        }
        /* The label key: the keyed map's code, then each label slot's bytes (nil for absent). */
        key.len = 0;
        if (buf_put(&key, &kc, sizeof kc) < 0) { PyErr_NoMemory(); goto done; }
        for (int l = 0; l < nl; l++) {
            int r = found.label_len[l] ? buf_put(&key, p + start + found.label_off[l], found.label_len[l])
                                       : buf_put(&key, &NIL, 1);
            if (r < 0) { PyErr_NoMemory(); goto done; }
        }
        Py_ssize_t lc = intern(&labels, key.data, key.len, count);
        Py_ssize_t known_stamps = stamps.count;
        Py_ssize_t sc = found.stamp_len ? intern(&stamps, p + start + found.stamp_off, found.stamp_len, count)
                                        : intern(&stamps, &NIL, 1, count);
        if (lc < 0 || sc < 0) { PyErr_NoMemory(); goto done; }
        if (stamps.count > known_stamps) {  /* a stamp not seen in this payload: its seconds, or NaN */
            double seconds = NAN;
            Head sh;
            const uint8_t *sv = p + start + found.stamp_off;
            if (found.stamp_len && read_head(sv, found.stamp_len, &sh) && sh.type == T_STR &&
                !iso_stamp(sv + sh.head, sh.body, &seconds))
                seconds = NAN;
            if (buf_put(&stamp_seconds, &seconds, sizeof seconds) < 0) { PyErr_NoMemory(); goto done; }
        }
        int64_t lc64 = lc, sc64 = sc, rec[2] = {(int64_t)start, (int64_t)(start + used)};
        if (buf_put(&measures, row, sizeof(double) * nm) < 0 || buf_put(&times, &t, sizeof t) < 0 ||
            buf_put(&lcodes, &lc64, sizeof lc64) < 0 || buf_put(&scodes, &sc64, sizeof sc64) < 0 ||
            buf_put(&records, rec, sizeof rec) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        for (int j = 0; j < ns; j++) {
            int64_t span[2] = {0, 0};
            if (found.span_len[j]) {
                span[0] = (int64_t)(start + found.span_off[j]);
                span[1] = span[0] + (int64_t)found.span_len[j];
            }
            if (buf_put(&spans, span, sizeof span) < 0) { PyErr_NoMemory(); goto done; }
        }
        pos = start + used;
        count++;
    }
    if (count == 0 || (expected >= 0 && count != expected)) goto refuse;
    {
        /* Each label key as the caller keeps it: the label slots' bytes, then the keyed map's. */
        PyObject *lkeys = PyList_New(labels.count), *lfirsts = NULL, *svalues = NULL, *sfirsts = NULL;
        if (!lkeys) goto done;
        for (Py_ssize_t c = 0; c < labels.count; c++) {
            const uint8_t *k = labels.arena.data + labels.off[c];
            int32_t code;
            memcpy(&code, k, sizeof code);
            size_t klen = labels.len[c] - sizeof code;
            size_t blen = code >= 0 ? keyed.len[code] : 0;
            PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(klen + blen));
            if (!b) { Py_DECREF(lkeys); goto done; }
            memcpy(PyBytes_AS_STRING(b), k + sizeof code, klen);
            if (blen) memcpy(PyBytes_AS_STRING(b) + klen, keyed.arena.data + keyed.off[code], blen);
            PyList_SET_ITEM(lkeys, c, b);
        }
        lfirsts = PyList_New(labels.count);
        if (!lfirsts) { Py_DECREF(lkeys); goto done; }
        for (Py_ssize_t c = 0; c < labels.count; c++) {
            PyObject *i = PyLong_FromSsize_t(labels.first[c]);
            if (!i) { Py_DECREF(lkeys); Py_DECREF(lfirsts); goto done; }
            PyList_SET_ITEM(lfirsts, c, i);
        }
        if (intern_lists(&stamps, &svalues, &sfirsts) < 0) {
            Py_DECREF(lkeys); Py_DECREF(lfirsts); Py_XDECREF(svalues); Py_XDECREF(sfirsts);
            goto done;
        }
        Py_DECREF(sfirsts);
        PyObject *bm = bytes_of_buf(&measures), *bt = bytes_of_buf(&times), *bl = bytes_of_buf(&lcodes),
                 *bs = bytes_of_buf(&scodes), *br = bytes_of_buf(&records), *bp = bytes_of_buf(&spans),
                 *bss = bytes_of_buf(&stamp_seconds);
        if (bm && bt && bl && bs && br && bp && bss)
            out = Py_BuildValue("(nNNNNNNNNNN)", count, bm, bt, bl, lkeys, lfirsts, bs, svalues, bss, br, bp);
        else {
            Py_XDECREF(bm); Py_XDECREF(bt); Py_XDECREF(bl); Py_XDECREF(bs); Py_XDECREF(br); Py_XDECREF(bp);
            Py_XDECREF(bss);
            Py_DECREF(lkeys); Py_DECREF(lfirsts); Py_DECREF(svalues);
        }
        result = out;
        goto done;
    }
refuse:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_Free(measures.data); PyMem_Free(times.data); PyMem_Free(lcodes.data); PyMem_Free(scodes.data);
    PyMem_Free(records.data); PyMem_Free(spans.data); PyMem_Free(key.data); PyMem_Free(stamp_seconds.data);
    intern_free(&labels); intern_free(&stamps); intern_free(&keyed);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)Scanner_scan, METH_VARARGS, Scanner_scan_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Scanner_doc,
"Scanner(schema, max_string, max_keyed)\n\n"
"schema: (key bytes, kind, slot) per key a record may have; kinds: 0 skip, 1 measure,\n"
"2 label, 3 stamp, 4 span, 5 keyed. See qwen_fluent.forward.scan.");

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qwen_fluent.forward._scan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Scanner_doc,
    .tp_methods = Scanner_methods,
    .tp_init = (initproc)Scanner_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_scan",
    .m_doc = "A PackedForward payload straight into columns (see qwen_fluent.forward.scan).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__scan(void) {
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&scan_module);
    if (!m) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
