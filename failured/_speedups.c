/* failured._speedups: the classifier's hottest pure-Python parts, compiled.
 *
 * Each function gives exactly what a named Python function or regular expression gives
 * (a ``str`` pattern: \d, \w, \s and \b are Unicode as in ``re``; the host pass is RE2's, ASCII),
 * in one left-to-right scan, each match decided from its first position as the expression
 * would decide it (its backtracking written out, never repeated): linear in the text.
 *
 *   fingerprint.py  the uuid, quoted value, IPv4, Windows path, host, hex, id and number passes
 *   codes.py        the http, errno, sqlstate, grpc and token finders, and the known tokens in one scan
 *   classify.py     without_frames, exception_type_in, the opaque-token pass, and model.spell_identifiers
 *   model.py        features and _column_sums (the same set in the same order, the same sums),
 *                   feature_order / feature_probabilities: the same order, sums and
 *                   probabilities from the set's layout alone (CPython's set algorithm written out),
 *                   and the training's lazy Adam step (the same weights, bit for bit)
 *
 * The extension is optional (setup.py): where it is not built each caller uses its Python
 * code, and a test per function compares the two (tests/test_fingerprint.py,
 * tests/test_codes_native.py, tests/test_classify.py, tests/test_speedups.py,
 * tests/test_classify_equivalence.py for the whole classifier).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
    Py_ssize_t blank_until;  /* http_at, per scan: how far a line start's try already crossed white space */
} Text;

#define AT(t, i) PyUnicode_READ((t)->kind, (t)->data, (i))

/* \w of a str pattern: sre's SRE_UNI_IS_WORD (alphanumeric in the Unicode sense, or "_"). */
static inline int is_word(Py_UCS4 c)
{
    if (c < 128)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    return Py_UNICODE_ISALNUM(c);
}

/* \d of a str pattern: any Unicode decimal digit. */
static inline int is_decimal(Py_UCS4 c)
{
    if (c < 128)
        return c >= '0' && c <= '9';
    return Py_UNICODE_ISDECIMAL(c);
}

static inline int is_ascii_alnum(Py_UCS4 c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline int is_upper(Py_UCS4 c)
{
    return c >= 'A' && c <= 'Z';
}

static inline int is_letter(Py_UCS4 c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static inline int is_hex(Py_UCS4 c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static inline int is_lower_hex(Py_UCS4 c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static inline int word_at(const Text *t, Py_ssize_t i)
{
    return i >= 0 && i < t->n && is_word(AT(t, i));
}

/* \b at position i (sre's SRE_AT_UNI_BOUNDARY; the text is never empty here). */
static inline int boundary(const Text *t, Py_ssize_t i)
{
    return word_at(t, i - 1) != word_at(t, i);
}

/* Whether text[i:] starts with the ASCII ``literal``. */
static int starts_with(const Text *t, Py_ssize_t i, const char *literal)
{
    for (; *literal; literal++, i++)
        if (i >= t->n || AT(t, i) != (Py_UCS4)(unsigned char)*literal)
            return 0;
    return 1;
}

/* A matcher: 1 when a match starts at p, its end in *end and in *keep whether the
 * matched text stays as it is (the passes whose replacement is a function). ``state``
 * lives for one scan (zeroed at its start): what a matcher learnt at an earlier position. */
typedef struct {
    Py_ssize_t no_host_before;  /* match_host: no host starts before here (a chain of labels without one) */
} ScanState;

typedef int (*Matcher)(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state);

/* \b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b
 * Fixed length: nothing to backtrack. */
static int match_uuid(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    static const int groups[] = {8, 4, 4, 4, 12};
    Py_ssize_t i = p;
    if (p + 36 > t->n || !is_hex(AT(t, p)) || !boundary(t, p))
        return 0;
    for (int g = 0; g < 5; g++) {
        if (g > 0) {
            if (AT(t, i) != '-')
                return 0;
            i++;
        }
        for (int k = 0; k < groups[g]; k++, i++)
            if (!is_hex(AT(t, i)))
                return 0;
    }
    if (!boundary(t, i))
        return 0;
    *end = i;
    return 1;
}

/* '[^'\n]{1,200}'|"[^"\n]{1,200}"|“[^”\n]{1,200}”|‘[^’\n]{1,200}’
 * The run stops at the closing quote, a line break or 200 characters; a shorter run
 * would end before a character that is not the closing quote, so only the longest counts. */
static int match_quoted(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_UCS4 close;
    switch (AT(t, p)) {
    case '\'': close = '\''; break;
    case '"': close = '"'; break;
    case 0x201C: close = 0x201D; break;
    case 0x2018: close = 0x2019; break;
    default: return 0;
    }
    Py_ssize_t i = p + 1, limit = p + 1 + 200;
    while (i < t->n && i < limit) {
        Py_UCS4 c = AT(t, i);
        if (c == close || c == '\n')
            break;
        i++;
    }
    if (i == p + 1 || i >= t->n || AT(t, i) != close)
        return 0;
    *end = i + 1;
    return 1;
}

/* \b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b
 * Each of the first three numbers must be its whole run of digits (a shorter take is
 * followed by a digit, not "."); the last one too (else \b falls between two digits).
 * The port counts only when its digits end at a boundary; without it, ":" is one. */
static int match_ip(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_ssize_t i = p, n = t->n;
    if (!is_decimal(AT(t, p)) || !boundary(t, p))
        return 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || AT(t, i) != '.')
                return 0;
            i++;
        }
        Py_ssize_t k = 0;
        while (k < 3 && i + k < n && is_decimal(AT(t, i + k)))
            k++;
        if (k == 0)
            return 0;
        i += k;
        if (i < n && is_decimal(AT(t, i)))
            return 0;
    }
    if (i + 1 < n && AT(t, i) == ':' && is_decimal(AT(t, i + 1))) {
        Py_ssize_t j = i + 1;
        while (j < n && is_decimal(AT(t, j)))
            j++;
        if (boundary(t, j)) {
            *end = j;
            return 1;
        }
    }
    if (!boundary(t, i))
        return 0;
    *end = i;
    return 1;
}

static inline int in_path_class(Py_UCS4 c)
{
    return is_word(c) || c == '.' || c == '@' || c == '~' || c == '+' || c == '-';
}

/* \b[A-Za-z]:\\(?:[\w.@~+-]+\\)+[\w.@~+-]*
 * Nothing follows the greedy parts, so the first way found is the longest: every
 * "name\" in turn, then the name after the last one. */
static int match_windows_path(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_ssize_t n = t->n, i, j;
    Py_UCS4 c = AT(t, p);
    int folders = 0;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) || p + 2 >= n || AT(t, p + 1) != ':'
        || AT(t, p + 2) != '\\' || !boundary(t, p))
        return 0;
    for (i = p + 3;; i = j + 1, folders++) {
        for (j = i; j < n && in_path_class(AT(t, j)); j++)
            ;
        if (j == i || j >= n || AT(t, j) != '\\')
            break;
    }
    if (folders == 0)
        return 0;
    while (i < n && in_path_class(AT(t, i)))
        i++;
    *end = i;
    return 1;
}

/* \b0x[0-9a-fA-F]+\b|\b[0-9a-f]{8,}\b with _hex_or_keep: "0x..." and mixed digits and
 * letters become <hex>, all digits or all letters stay. A shorter run would end between
 * two hex characters, never at a boundary: only the whole run can match. */
static int match_hex(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_ssize_t n = t->n, j;
    Py_UCS4 c = AT(t, p);
    if (!is_lower_hex(c) || !boundary(t, p))
        return 0;
    if (c == '0' && p + 2 < n && AT(t, p + 1) == 'x' && is_hex(AT(t, p + 2))) {
        for (j = p + 2; j < n && is_hex(AT(t, j)); j++)
            ;
        if (boundary(t, j)) {
            *end = j;
            *keep = 0;
            return 1;
        }
    }
    int digits = 0, letters = 0;
    for (j = p; j < n && is_lower_hex(AT(t, j)); j++) {
        if (AT(t, j) <= '9')
            digits++;
        else
            letters++;
    }
    if (j - p < 8 || !boundary(t, j))
        return 0;
    *end = j;
    *keep = digits == 0 || letters == 0;
    return 1;
}

static inline int in_id_class(Py_UCS4 c)
{
    return is_ascii_alnum(c) || c == '_' || c == '-';
}

/* (?:\b|(?<=[^\x00-\x7f]))[A-Za-z0-9_-]{6,}(?:\b|(?=[^\x00-\x7f])) with _id_or_keep: replaced by <id>
 * when it holds three digits or more and a letter. Greedy to the run's end, then back to the last boundary that
 * leaves six characters or more. */
static int match_id(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_ssize_t n = t->n, r, e;
    /* (?:\b|(?<=[^\x00-\x7f])) before, (?:\b|(?=[^\x00-\x7f])) after: beside a Chinese character too */
    if (!in_id_class(AT(t, p)) || !(boundary(t, p) || (p > 0 && AT(t, p - 1) > 0x7f)))
        return 0;
    for (r = p; r < n && in_id_class(AT(t, r)); r++)
        ;
    if (r - p < 6)
        return 0;
    if (r < n && AT(t, r) > 0x7f)
        e = r;
    else
        for (e = r; e >= p + 6 && !boundary(t, e); e--)
            ;
    if (e < p + 6)
        return 0;
    int digits = 0, letter = 0;
    for (Py_ssize_t i = p; i < e; i++) {
        Py_UCS4 c = AT(t, i);
        if (c >= '0' && c <= '9')
            digits++;
        else if (c != '_' && c != '-')
            letter = 1;
    }
    *end = e;
    *keep = !(digits >= 3 && letter);
    return 1;
}

/* (?<![A-Za-z0-9<])[-+]?\d+(?:\.\d+)? */
static int match_num(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_ssize_t n = t->n, i = p;
    Py_UCS4 c = AT(t, p);
    if (c == '-' || c == '+')
        i++;
    if (i >= n || !is_decimal(AT(t, i)))
        return 0;
    if (p > 0) {
        Py_UCS4 before = AT(t, p - 1);
        if (is_ascii_alnum(before) || before == '<')
            return 0;
    }
    while (i < n && is_decimal(AT(t, i)))
        i++;
    if (i + 1 < n && AT(t, i) == '.' && is_decimal(AT(t, i + 1))) {
        i += 2;
        while (i < n && is_decimal(AT(t, i)))
            i++;
    }
    *end = i;
    return 1;
}

/* \w and \b of RE2 (the host pass runs on RE2): ASCII only. */
static inline int is_ascii_word(Py_UCS4 c)
{
    return is_ascii_alnum(c) || c == '_';
}

static inline int ascii_boundary(const Text *t, Py_ssize_t i)
{
    int before = i > 0 && is_ascii_word(AT(t, i - 1)), after = i < t->n && is_ascii_word(AT(t, i));
    return before != after;
}

static inline int in_label_class(Py_UCS4 c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* (?::\d+)?\b after a host name ending at e, RE2's ASCII \d and \b: the end, or -1. The port's
 * digits count only whole (between two digits there is no boundary). */
static Py_ssize_t port_and_boundary(const Text *t, Py_ssize_t e)
{
    if (e + 1 < t->n && AT(t, e) == ':' && AT(t, e + 1) >= '0' && AT(t, e + 1) <= '9') {
        Py_ssize_t d = e + 1;
        while (d < t->n && AT(t, d) >= '0' && AT(t, d) <= '9')
            d++;
        if (ascii_boundary(t, d))
            return d;
    }
    return ascii_boundary(t, e) ? e : -1;
}

static const char *const top_level_domains[] = {
    "com", "net", "org", "io", "cn", "co", "dev", "app", "cloud", "ai", "info", "biz", "me", "us", "uk", "de", "jp", "hk",
    "tw", "gov", "edu", "local", "internal", "lan", NULL};

/* RE2's \b(?:[a-z0-9-]+\.)+(?:com|net|...|lan)(?::\d+)?\b(?P<more>\.[A-Za-z_])?|\blocalhost(?::\d+)?\b
 * with _host_or_keep: kept as it is when "more" matched (a dotted class name), else <host>.
 * Leftmost-first: the most labels first (the domain after the last dot, then the one before...),
 * each domain in its order, with a port first. Where a domain may start does not depend on
 * where the chain of labels was entered: once a chain has none, no later start in it has one,
 * so each chain is read once (linear, as RE2). */
static int match_host(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    Py_ssize_t n = t->n, i, j, e, last = -1;
    if (!in_label_class(AT(t, p)) || !ascii_boundary(t, p))
        return 0;
    if (p >= state->no_host_before) {
        for (i = p;;) {  /* the chain: labels each followed by a dot; ``last`` after the last dot */
            for (j = i; j < n && in_label_class(AT(t, j)); j++)
                ;
            if (j == i || j >= n || AT(t, j) != '.')
                break;
            last = i = j + 1;
        }
        for (Py_ssize_t start = last; start > p; ) {
            for (int d = 0; top_level_domains[d] != NULL; d++) {
                if (!starts_with(t, start, top_level_domains[d]))
                    continue;
                e = port_and_boundary(t, start + (Py_ssize_t)strlen(top_level_domains[d]));
                if (e < 0)
                    continue;
                *keep = 0;
                if (e + 1 < n && AT(t, e) == '.' && (is_letter(AT(t, e + 1)) || AT(t, e + 1) == '_')) {
                    e += 2;
                    *keep = 1;
                }
                *end = e;
                return 1;
            }
            for (start -= 2; start > p && AT(t, start - 1) != '.'; start--)  /* the dot before this label's */
                ;
        }
        state->no_host_before = j;
    }
    if (starts_with(t, p, "localhost")) {
        e = port_and_boundary(t, p + 9);
        if (e >= 0) {
            *end = e;
            *keep = 0;
            return 1;
        }
    }
    return 0;
}

/* classify._OPAQUE: a whole run of [A-Za-z0-9+/=_-], 24 characters or more, holding three ASCII digits or more.
 * A run that is shorter or has fewer digits is kept (the scan goes on after it: no match starts inside a run). */
#define OPAQUE_MIN_CHARS 24
#define OPAQUE_DIGITS 3

static inline int is_opaque_char(Py_UCS4 c)
{
    return is_ascii_alnum(c) || c == '+' || c == '/' || c == '=' || c == '_' || c == '-';
}

static int match_opaque(const Text *t, Py_ssize_t p, Py_ssize_t *end, int *keep, ScanState *state)
{
    if (!is_opaque_char(AT(t, p)) || (p > 0 && is_opaque_char(AT(t, p - 1))))
        return 0;
    Py_ssize_t e = p, digits = 0;
    for (; e < t->n && is_opaque_char(AT(t, e)); e++)
        digits += AT(t, e) >= '0' && AT(t, e) <= '9';
    *end = e;
    *keep = e - p < OPAQUE_MIN_CHARS || digits < OPAQUE_DIGITS;
    return 1;
}

/* The output: characters appended as UCS4, made a str at the end. */
typedef struct {
    Py_UCS4 *buffer;
    Py_ssize_t length, capacity;
} Output;

static int output_reserve(Output *out, Py_ssize_t more)
{
    if (out->length + more <= out->capacity)
        return 0;
    Py_ssize_t capacity = (out->length + more) * 2 + 64;
    Py_UCS4 *grown = PyMem_Realloc(out->buffer, capacity * sizeof(Py_UCS4));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->buffer = grown;
    out->capacity = capacity;
    return 0;
}

static int output_text(Output *out, const Text *t, Py_ssize_t start, Py_ssize_t stop)
{
    if (output_reserve(out, stop - start) < 0)
        return -1;
    for (Py_ssize_t i = start; i < stop; i++)
        out->buffer[out->length++] = AT(t, i);
    return 0;
}

static int output_ascii(Output *out, const char *text)
{
    Py_ssize_t size = (Py_ssize_t)strlen(text);
    if (output_reserve(out, size) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < size; i++)
        out->buffer[out->length++] = (Py_UCS4)(unsigned char)text[i];
    return 0;
}

/* re.sub(pattern, replacement, text): matches found left to right in the original text,
 * the next search starting where a match ended (none of the patterns matches empty). */
/* The text a pass built in ``out`` (its tail from ``done`` added), or ``text`` itself when nothing
 * changed; ``out``'s buffer is freed either way. */
static PyObject *finish_output(Output *out, const Text *t, Py_ssize_t done, PyObject *text, int changed)
{
    PyObject *result = NULL;
    if (!changed) {
        Py_INCREF(text);
        result = text;
    } else if (output_text(out, t, done, t->n) >= 0) {
        result = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out->buffer, out->length);
    }
    PyMem_Free(out->buffer);
    return result;
}

/* ``t`` viewing the str ``text`` (-1 with TypeError for another type). */
static int prepare(PyObject *text, Text *t)
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "a str is required");
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return -1;
#endif
    t->kind = PyUnicode_KIND(text);
    t->data = PyUnicode_DATA(text);
    t->n = PyUnicode_GET_LENGTH(text);
    t->blank_until = 0;
    return 0;
}

static PyObject *substitute(PyObject *text, Matcher match, const char *replacement)
{
    Text t;
    if (prepare(text, &t) < 0)
        return NULL;
    Output out = {NULL, 0, 0};
    ScanState state = {0};
    Py_ssize_t done = 0, p = 0;
    int changed = 0;
    while (p < t.n) {
        Py_ssize_t end = p;
        int keep = 0;
        if (!match(&t, p, &end, &keep, &state)) {
            p++;
            continue;
        }
        if (!keep) {
            if (output_text(&out, &t, done, p) < 0 || output_ascii(&out, replacement) < 0)
                goto error;
            done = end;
            changed = 1;
        }
        p = end;
    }
    return finish_output(&out, &t, done, text, changed);
error:
    PyMem_Free(out.buffer);
    return NULL;
}

#define PASS(name, matcher, replacement)                  \
    static PyObject *name(PyObject *self, PyObject *text) \
    {                                                     \
        return substitute(text, matcher, replacement);    \
    }

PASS(uuid_pass, match_uuid, "<uuid>")
PASS(quoted_pass, match_quoted, "<str>")
PASS(ip_pass, match_ip, "<ip>")
PASS(windows_path_pass, match_windows_path, "<path>")
PASS(host_pass, match_host, "<host>")
PASS(hex_pass, match_hex, "<hex>")
PASS(id_pass, match_id, "<id>")
PASS(number_pass, match_num, "<num>")
PASS(opaque_pass, match_opaque, " 0x ")

static int opens_a_quote(const Text *t, Py_ssize_t from, Py_ssize_t to)
{
    for (Py_ssize_t i = from; i < to; i++) {
        Py_UCS4 c = AT(t, i);
        if (c == '\'' || c == '"' || c == 0x201C || c == 0x2018)
            return 1;
    }
    return 0;
}

/* quoted_in_head(text, reach): fingerprint._quoted_in_head(text) with _STR_REACH = ``reach``:
 * the quoted-value pass over a head cut at a space, or None when an opening quote that no
 * value took lies within ``reach`` of the end (a value opened there may close past the cut). */
static PyObject *quoted_in_head(PyObject *self, PyObject *args)
{
    PyObject *text;
    Py_ssize_t reach;
    Text t;
    if (!PyArg_ParseTuple(args, "Un:quoted_in_head", &text, &reach) || prepare(text, &t) < 0)
        return NULL;
    Py_ssize_t window = t.n - reach, done = 0, p = 0;
    Output out = {NULL, 0, 0};
    ScanState state = {0};
    while (p < t.n) {
        Py_ssize_t end = p;
        int keep = 0;
        if (!match_quoted(&t, p, &end, &keep, &state)) {
            p++;
            continue;
        }
        if (opens_a_quote(&t, done > window ? done : window, p))
            goto undecided;
        if (output_text(&out, &t, done, p) < 0 || output_ascii(&out, "<str>") < 0)
            goto error;
        done = p = end;
    }
    if (opens_a_quote(&t, done > window ? done : window, t.n))
        goto undecided;
    return finish_output(&out, &t, done, text, done > 0);
undecided:
    PyMem_Free(out.buffer);
    Py_RETURN_NONE;
error:
    PyMem_Free(out.buffer);
    return NULL;
}

/* Code extractors (failured/codes.py): each returns the list of what the Python extractor's
 * regular expression finds, in order, as ``finditer`` with the first non-empty group
 * (``findall`` for tokens). */

static inline int is_space(Py_UCS4 c)  /* \s of a str pattern */
{
    if (c < 128)
        return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F);
    return Py_UNICODE_ISSPACE(c);
}

static int append_slice(PyObject *list, PyObject *text, Py_ssize_t start, Py_ssize_t stop)
{
    PyObject *piece = PyUnicode_Substring(text, start, stop);
    if (piece == NULL)
        return -1;
    int failed = PyList_Append(list, piece);
    Py_DECREF(piece);
    return failed;
}

/* [A-Za-z][\w.\-]*\w at p (a letter): the index of its last \w, or -1 if none; ``dot``: its first ".". */
static Py_ssize_t token_last(const Text *t, Py_ssize_t p, Py_ssize_t *dot)
{
    Py_ssize_t last = -1;
    *dot = -1;
    for (Py_ssize_t r = p + 1; r < t->n; r++) {
        Py_UCS4 c = AT(t, r);
        if (is_word(c))
            last = r;
        else if (c == '.') {
            if (*dot < 0)
                *dot = r;
        }
        else if (c != '-')
            break;
    }
    return last;
}

/* ``piece`` appended to ``list`` if ``known`` holds it (every piece when ``known`` is NULL): 0, or -1 on failure. */
static int append_if_known(PyObject *list, PyObject *known, PyObject *text, Py_ssize_t start, Py_ssize_t stop)
{
    if (known == NULL)
        return append_slice(list, text, start, stop);
    PyObject *piece = PyUnicode_Substring(text, start, stop);
    if (piece == NULL)
        return -1;
    int found = PySet_Contains(known, piece);
    if (found > 0 && PyList_Append(list, piece) < 0)
        found = -1;
    Py_DECREF(piece);
    return found < 0 ? -1 : 0;
}

/* The tokens of ``text`` (every one when ``known`` is NULL), or with a set ``known`` the ones it holds,
 * each followed (a dotted one) by its part before the first "." if ``known`` holds that. */
static PyObject *scan_tokens(PyObject *text, PyObject *known)
{
    Text t;
    if (prepare(text, &t) < 0)
        return NULL;
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    Py_ssize_t p = 0, dot;
    while (p < t.n) {
        Py_ssize_t last = is_letter(AT(&t, p)) ? token_last(&t, p, &dot) : -1;
        if (last < 0) {
            p++;
            continue;
        }
        if (append_if_known(found, known, text, p, last + 1) < 0
            || (known != NULL && dot >= 0 && dot < last && append_if_known(found, known, text, p, dot) < 0)) {
            Py_DECREF(found);
            return NULL;
        }
        p = last + 1;
    }
    return found;
}

/* [A-Za-z][\w.\-]*\w : the run of [\w.-] after the letter, back to its last \w. */
static PyObject *tokens(PyObject *self, PyObject *text)
{
    return scan_tokens(text, NULL);
}

/* known_tokens(text, known): what codes.py keeps of codes.extract_tokens(text), in its order,
 *     [value for value in extract_tokens(text) if value in known]
 * each token, then (a dotted one) its part before the first ".", each kept if ``known`` (a set)
 * holds it: one scan, no list of every token. */
static PyObject *known_tokens(PyObject *self, PyObject *args)
{
    PyObject *text, *known;
    if (!PyArg_ParseTuple(args, "UO:known_tokens", &text, &known))
        return NULL;
    if (!PyAnySet_Check(known)) {
        PyErr_SetString(PyExc_TypeError, "known must be a set");
        return NULL;
    }
    return scan_tokens(text, known);
}

/* Digits from i (Unicode \d), after an optional "-" when ``sign``: the end, or -1 if none. */
static Py_ssize_t number_end(const Text *t, Py_ssize_t i, int sign)
{
    if (sign && i < t->n && AT(t, i) == '-')
        i++;
    if (i >= t->n || !is_decimal(AT(t, i)))
        return -1;
    while (i < t->n && is_decimal(AT(t, i)))
        i++;
    return i;
}

static Py_ssize_t skip_spaces(const Text *t, Py_ssize_t i)
{
    while (i < t->n && is_space(AT(t, i)))
        i++;
    return i;
}

/* One match of codes._ERRNO at p, alternatives in their order: 1 with the group's span. */
static int errno_at(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end)
{
    Py_ssize_t n = t->n, i, j;
    Py_UCS4 c = AT(t, p);
    if (c == '[') {
        /* \[Errno\s+(-?\d+)\] */
        if (starts_with(t, p, "[Errno") && p + 6 < n && is_space(AT(t, p + 6))) {
            i = skip_spaces(t, p + 6);
            j = number_end(t, i, 1);
            if (j >= 0 && j < n && AT(t, j) == ']') {
                *start = i, *stop = j, *end = j + 1;
                return 1;
            }
        }
        /* \[(WinError\s+\d+)\] */
        if (starts_with(t, p, "[WinError") && p + 9 < n && is_space(AT(t, p + 9))) {
            i = skip_spaces(t, p + 9);
            j = number_end(t, i, 0);
            if (j >= 0 && j < n && AT(t, j) == ']') {
                *start = p + 1, *stop = j, *end = j + 1;
                return 1;
            }
        }
        return 0;
    }
    if (!boundary(t, p))  /* every other alternative starts with \b */
        return 0;
    if (c == 'e' && starts_with(t, p, "errno")) {
        /* \berrno\s*[=:]?\s*(-?\d+) */
        i = skip_spaces(t, p + 5);
        if (i < n && (AT(t, i) == '=' || AT(t, i) == ':'))
            i = skip_spaces(t, i + 1);
        j = number_end(t, i, 1);
        if (j >= 0) {
            *start = i, *stop = j, *end = j;
            return 1;
        }
    }
    if (c == 'o' && starts_with(t, p, "os error ")) {
        /* \bos error (\d+) */
        j = number_end(t, p + 9, 0);
        if (j >= 0) {
            *start = p + 9, *stop = j, *end = j;
            return 1;
        }
    }
    if (is_upper(c)) {
        /* \b[A-Z]\w*Error\((-?\d+), : the word must end in "Error" just before "(" */
        for (i = p + 1; i < n && is_word(AT(t, i)); i++)
            ;
        if (i - 5 >= p + 1 && starts_with(t, i - 5, "Error(")) {
            j = number_end(t, i + 1, 1);
            if (j >= 0 && j < n && AT(t, j) == ',') {
                *start = i + 1, *stop = j, *end = j + 1;
                return 1;
            }
        }
        /* \b(E[A-Z][A-Z0-9_]{1,18}|WSAE[A-Z]{2,18})\b : the whole run, then a boundary */
        if (c == 'E' && p + 1 < n && is_upper(AT(t, p + 1))) {
            for (i = p + 2; i < n && i < p + 2 + 19; i++) {
                Py_UCS4 d = AT(t, i);
                if (!(is_upper(d) || (d >= '0' && d <= '9') || d == '_'))
                    break;
            }
            if (i - (p + 2) >= 1 && i - (p + 2) <= 18 && boundary(t, i)) {
                *start = p, *stop = i, *end = i;
                return 1;
            }
        }
        if (c == 'W' && starts_with(t, p, "WSAE")) {
            for (i = p + 4; i < n && i < p + 4 + 19 && is_upper(AT(t, i)); i++)
                ;
            if (i - (p + 4) >= 2 && i - (p + 4) <= 18 && boundary(t, i)) {
                *start = p, *stop = i, *end = i;
                return 1;
            }
        }
    }
    return 0;
}

/* The group [start, stop) appended to ``list``, as a pair (``at``, group) when ``at`` >= 0: 0, or -1. */
static int append_match(PyObject *list, PyObject *text, Py_ssize_t at, Py_ssize_t start, Py_ssize_t stop)
{
    if (at < 0)
        return append_slice(list, text, start, stop);
    PyObject *pair = Py_BuildValue("(nN)", at, PyUnicode_Substring(text, start, stop));
    if (pair == NULL)
        return -1;
    int failed = PyList_Append(list, pair);
    Py_DECREF(pair);
    return failed;
}

typedef int (*Finder)(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end);

/* finditer over the text: each match's group (with ``positioned``, a pair (where the match starts, its
 * group)), the next search where the match ended. */
static PyObject *find_all(PyObject *text, Finder find, int positioned)
{
    Text t;
    if (prepare(text, &t) < 0)
        return NULL;
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    Py_ssize_t p = 0;
    while (p < t.n) {
        Py_ssize_t start, stop, end;
        if (!find(&t, p, &start, &stop, &end)) {
            p++;
            continue;
        }
        if (append_match(found, text, positioned ? p : -1, start, stop) < 0) {
            Py_DECREF(found);
            return NULL;
        }
        p = end;
    }
    return found;
}

static PyObject *errno_values(PyObject *self, PyObject *text)
{
    return find_all(text, errno_at, 0);
}

/* [A-Z][A-Z_]{4,} from i: its end, or -1. */
static Py_ssize_t constant_end(const Text *t, Py_ssize_t i)
{
    if (i >= t->n || !is_upper(AT(t, i)))
        return -1;
    Py_ssize_t j = i + 1;
    while (j < t->n && (is_upper(AT(t, j)) || AT(t, j) == '_'))
        j++;
    return j - (i + 1) >= 4 ? j : -1;
}

/* One match of codes._GRPC at p (MULTILINE), alternatives in their order. */
static int grpc_at(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end)
{
    Py_ssize_t n = t->n, i, j;
    Py_UCS4 c = AT(t, p);
    if (c == 'c' && starts_with(t, p, "code") && boundary(t, p)) {
        /* \bcode\s*=\s*([A-Z][A-Za-z]{3,})\b */
        i = skip_spaces(t, p + 4);
        if (i < n && AT(t, i) == '=') {
            i = skip_spaces(t, i + 1);
            if (i < n && is_upper(AT(t, i))) {
                for (j = i + 1; j < n && is_letter(AT(t, j)); j++)
                    ;
                if (j - (i + 1) >= 3 && boundary(t, j)) {
                    *start = i, *stop = j, *end = j;
                    return 1;
                }
            }
        }
    }
    if (c == 'S' && starts_with(t, p, "StatusCode.")) {
        /* StatusCode\.([A-Z_]{5,})\b */
        for (j = p + 11; j < n && (is_upper(AT(t, j)) || AT(t, j) == '_'); j++)
            ;
        if (j - (p + 11) >= 5 && boundary(t, j)) {
            *start = p + 11, *stop = j, *end = j;
            return 1;
        }
    }
    if (c == 'S' && starts_with(t, p, "StatusCode=\"")) {
        /* StatusCode=\"([A-Za-z]{5,})\" */
        for (j = p + 12; j < n && is_letter(AT(t, j)); j++)
            ;
        if (j - (p + 12) >= 5 && j < n && AT(t, j) == '"') {
            *start = p + 12, *stop = j, *end = j + 1;
            return 1;
        }
    }
    if (is_decimal(c) && boundary(t, p)) {
        /* \b\d{1,2} ([A-Z][A-Z_]{4,})\b */
        i = p + 1;
        if (i < n && is_decimal(AT(t, i)))
            i++;
        if (i < n && AT(t, i) == ' ') {
            j = constant_end(t, i + 1);
            if (j >= 0 && boundary(t, j)) {
                *start = i + 1, *stop = j, *end = j;
                return 1;
            }
        }
    }
    if (c == 'S' || c == 'R') {
        /* (?:StatusRuntimeException|StatusException|RpcException|RpcError)\W{1,3}([A-Z][A-Z_]{4,})\b */
        static const char *names[] = {"StatusRuntimeException", "StatusException", "RpcException", "RpcError"};
        for (int k = 0; k < 4; k++) {
            if (!starts_with(t, p, names[k]))
                continue;
            i = p + (Py_ssize_t)strlen(names[k]);
            for (j = i; j < n && j < i + 4 && !is_word(AT(t, j)); j++)
                ;
            if (j - i >= 1 && j - i <= 3) {
                Py_ssize_t e = constant_end(t, j);
                if (e >= 0 && boundary(t, e)) {
                    *start = j, *stop = e, *end = e;
                    return 1;
                }
            }
        }
    }
    if (c == '"' && starts_with(t, p, "\"status\"")) {
        /* \"status\"\s*:\s*\"([A-Z][A-Z_]{4,})\" */
        i = skip_spaces(t, p + 8);
        if (i < n && AT(t, i) == ':') {
            i = skip_spaces(t, i + 1);
            if (i < n && AT(t, i) == '"') {
                j = constant_end(t, i + 1);
                if (j >= 0 && j < n && AT(t, j) == '"') {
                    *start = i + 1, *stop = j, *end = j + 1;
                    return 1;
                }
            }
        }
    }
    if (is_upper(c) && (p == 0 || AT(t, p - 1) == '\n')) {
        /* ^([A-Z][A-Z_]{4,}): */
        j = constant_end(t, p);
        if (j >= 0 && j < n && AT(t, j) == ':') {
            *start = p, *stop = j, *end = j + 1;
            return 1;
        }
    }
    return 0;
}

static PyObject *grpc_values(PyObject *self, PyObject *text)
{
    return find_all(text, grpc_at, 0);
}

/* re.IGNORECASE on ASCII letters: the other case, and the four non-ASCII letters Python's
 * re folds onto them (U+0130 and U+0131 onto i, U+017F onto s, U+212A onto k). */
static inline Py_UCS4 fold(Py_UCS4 c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c == 0x130 || c == 0x131)
        return 'i';
    if (c == 0x17F)
        return 's';
    if (c == 0x212A)
        return 'k';
    return c;
}

/* Whether text[i:] starts with the lower-case ASCII ``word``, ignoring case as re does. */
static int starts_with_folded(const Text *t, Py_ssize_t i, const char *word)
{
    for (; *word; word++, i++)
        if (i >= t->n || fold(AT(t, i)) != (Py_UCS4)(unsigned char)*word)
            return 0;
    return 1;
}

/* "word" followed by \s+ from i: the end of the spaces, or -1. */
static Py_ssize_t word_and_spaces(const Text *t, Py_ssize_t i, const char *word)
{
    if (!starts_with_folded(t, i, word))
        return -1;
    i += (Py_ssize_t)strlen(word);
    if (i >= t->n || !is_space(AT(t, i)))
        return -1;
    return skip_spaces(t, i);
}

/* (\d{3})(?![\d.]) at i: its end, or -1. */
static Py_ssize_t status_end(const Text *t, Py_ssize_t i)
{
    for (int k = 0; k < 3; k++, i++)
        if (i >= t->n || !is_decimal(AT(t, i)))
            return -1;
    if (i < t->n && (is_decimal(AT(t, i)) || AT(t, i) == '.'))
        return -1;
    return i;
}

/* ["']?\s*[:=]?\s*["'(\[]?\s*(\d{3})(?![\d.]) from i: each part greedy (a part left out
 * never lets a later one go further), so the first way is the only one. */
static Py_ssize_t keyed_status_start(const Text *t, Py_ssize_t i)
{
    Py_ssize_t n = t->n;
    if (i < n && (AT(t, i) == '"' || AT(t, i) == '\''))
        i++;
    i = skip_spaces(t, i);
    if (i < n && (AT(t, i) == ':' || AT(t, i) == '='))
        i++;
    i = skip_spaces(t, i);
    if (i < n) {
        Py_UCS4 c = AT(t, i);
        if (c == '"' || c == '\'' || c == '(' || c == '[')
            i++;
    }
    return skip_spaces(t, i);
}

/* Where [ _-]?code can end after a word that ends at i, longer first, added to ``ends``: the new count. */
static int code_word_ends(const Text *t, Py_ssize_t i, Py_ssize_t *ends, int count)
{
    if (i < t->n && (AT(t, i) == ' ' || AT(t, i) == '_' || AT(t, i) == '-') && starts_with_folded(t, i + 1, "code"))
        ends[count++] = i + 5;
    if (starts_with_folded(t, i, "code"))
        ends[count++] = i + 4;
    return count;
}

/* One match of codes._HTTP at p (IGNORECASE, MULTILINE), alternatives in their order. */
static int http_at(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end)
{
    Py_ssize_t n = t->n, i, j;
    Py_UCS4 c = fold(AT(t, p));
    /* HTTP/\d(?:\.\d)?\s+(\d{3})\b */
    if (c == 'h' && starts_with_folded(t, p, "http/") && p + 5 < n && is_decimal(AT(t, p + 5))) {
        i = p + 6;
        if (i + 1 < n && AT(t, i) == '.' && is_decimal(AT(t, i + 1)))
            i += 2;
        if (i < n && is_space(AT(t, i))) {
            i = skip_spaces(t, i);
            for (j = i; j < i + 3 && j < n && is_decimal(AT(t, j)); j++)
                ;
            if (j == i + 3 && boundary(t, j)) {
                *start = i, *stop = j, *end = j;
                return 1;
            }
        }
    }
    int at_boundary = boundary(t, p);
    /* \b(?:status(?:[ _-]?code)?|statuscode|http(?:[ _-]?(?:status|error|code))?|response[ _-]?code
     *    |error[ _-]?code|error|code)<keyed_status> : each way the words can end, in the order tried */
    if (at_boundary && (c == 's' || c == 'h' || c == 'r' || c == 'e' || c == 'c')) {
        Py_ssize_t ends[16];
        int count = 0;
        static const char *after_http[] = {"status", "error", "code"};
        if (starts_with_folded(t, p, "status")) {
            count = code_word_ends(t, p + 6, ends, count);
            ends[count++] = p + 6;
        }
        if (starts_with_folded(t, p, "statuscode"))
            ends[count++] = p + 10;
        if (starts_with_folded(t, p, "http")) {
            i = p + 4;
            if (i < n && (AT(t, i) == ' ' || AT(t, i) == '_' || AT(t, i) == '-'))
                for (int k = 0; k < 3; k++)
                    if (starts_with_folded(t, i + 1, after_http[k]))
                        ends[count++] = i + 1 + (Py_ssize_t)strlen(after_http[k]);
            for (int k = 0; k < 3; k++)
                if (starts_with_folded(t, i, after_http[k]))
                    ends[count++] = i + (Py_ssize_t)strlen(after_http[k]);
            ends[count++] = i;
        }
        if (starts_with_folded(t, p, "response")) {
            count = code_word_ends(t, p + 8, ends, count);
        }
        if (starts_with_folded(t, p, "error")) {
            count = code_word_ends(t, p + 5, ends, count);
            ends[count++] = p + 5;
        }
        if (starts_with_folded(t, p, "code"))
            ends[count++] = p + 4;
        for (int k = 0; k < count; k++) {
            i = keyed_status_start(t, ends[k]);
            j = status_end(t, i);
            if (j >= 0) {
                *start = i, *stop = j, *end = j;
                return 1;
            }
        }
    }
    /* \b(?:returned|received|got|with|resulted in)\s+(?:an?\s+)?[`'"]?(?:http\s+)?(?:status\s+)?(?:code\s+)?
     *   (\d{3})(?![\d.]) : each optional part takes what it can; none can take what a later one needs */
    if (at_boundary && (c == 'r' || c == 'g' || c == 'w')) {
        static const char *verbs[] = {"returned", "received", "got", "with", "resulted in"};
        for (int k = 0; k < 5; k++) {
            i = word_and_spaces(t, p, verbs[k]);
            if (i < 0)
                continue;
            if (i < n && fold(AT(t, i)) == 'a') {
                j = i + 1;
                if (j < n && fold(AT(t, j)) == 'n' && j + 1 < n && is_space(AT(t, j + 1)))
                    i = skip_spaces(t, j + 1);
                else if (j < n && is_space(AT(t, j)))
                    i = skip_spaces(t, j);
            }
            if (i < n && (AT(t, i) == '`' || AT(t, i) == '\'' || AT(t, i) == '"'))
                i++;
            if ((j = word_and_spaces(t, i, "http")) >= 0)
                i = j;
            if ((j = word_and_spaces(t, i, "status")) >= 0)
                i = j;
            if ((j = word_and_spaces(t, i, "code")) >= 0)
                i = j;
            j = status_end(t, i);
            if (j >= 0) {
                *start = i, *stop = j, *end = j;
                return 1;
            }
        }
    }
    /* \b(\d{3})\s+(?:Client|Server)\s+Error\b */
    if (at_boundary && is_decimal(AT(t, p))) {
        for (j = p; j < p + 3 && j < n && is_decimal(AT(t, j)); j++)
            ;
        if (j == p + 3 && j < n && is_space(AT(t, j))) {
            i = skip_spaces(t, j);
            Py_ssize_t k = word_and_spaces(t, i, "client");
            if (k < 0)
                k = word_and_spaces(t, i, "server");
            if (k >= 0 && starts_with_folded(t, k, "error") && boundary(t, k + 5)) {
                *start = p, *stop = j, *end = k + 5;
                return 1;
            }
        }
    }
    /* ^\s*\[?(\d{3})\]?[\s:]; a line start inside white space an earlier line start's try already crossed
       (blank lines) has the same outcome, a failure: skipping it keeps the scan linear in the text */
    if ((p == 0 || AT(t, p - 1) == '\n') && p >= t->blank_until) {
        i = skip_spaces(t, p);
        ((Text *)t)->blank_until = i;  /* the scan's own Text (find_all's local): its state, not the text's */
        if (i < n && AT(t, i) == '[')
            i++;
        for (j = i; j < i + 3 && j < n && is_decimal(AT(t, j)); j++)
            ;
        if (j == i + 3) {
            Py_ssize_t k = j;
            if (k < n && AT(t, k) == ']')
                k++;
            if (k < n && (is_space(AT(t, k)) || AT(t, k) == ':')) {
                *start = i, *stop = j, *end = k + 1;
                return 1;
            }
        }
    }
    return 0;
}

/* (start of the match, its status) of every codes._HTTP match: the caller reads what precedes it. */
static PyObject *http_statuses(PyObject *self, PyObject *text)
{
    return find_all(text, http_at, 1);
}

/* \bSQL\s?STATE\s*[\[:=]?\s*\[?\s*([0-9A-Z]{5})\b (IGNORECASE); the second alternative,
 * \bSQL state\s*[:=]?\s*\[?([0-9A-Z]{5})\b, matches nothing the first does not. */
/* ((?=[A-Z]{0,4}[0-9])[0-9A-Z]{5}) followed by ``close`` at i, ignoring case: its end, or -1. */
static Py_ssize_t coded_state_end(const Text *t, Py_ssize_t i, Py_UCS4 close)
{
    int digits = 0;
    for (Py_ssize_t j = i; j < i + 5; j++) {
        Py_UCS4 c = j < t->n ? fold(AT(t, j)) : 0;
        if (c >= '0' && c <= '9')
            digits++;
        else if (!(c >= 'a' && c <= 'z'))
            return -1;
    }
    return digits && i + 5 < t->n && AT(t, i + 5) == close ? i + 5 : -1;
}

/* A state at i followed by ``close``: the match (``close`` included in it), or 0. */
static int state_found(const Text *t, Py_ssize_t i, Py_UCS4 close, Py_ssize_t *start, Py_ssize_t *stop,
                       Py_ssize_t *end)
{
    Py_ssize_t closing = coded_state_end(t, i, close);
    if (closing < 0)
        return 0;
    *start = i, *stop = closing, *end = closing + 1;
    return 1;
}

/* MySQL's "ERROR 1062 (23000):" and "1045 (28000)": \b[0-9]{4,5} \((state)\) at p. */
static int mysql_state_at(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end)
{
    Py_ssize_t i = p;
    while (i < t->n && i - p < 6 && AT(t, i) >= '0' && AT(t, i) <= '9')
        i++;
    if (i - p < 4 || i - p > 5 || !boundary(t, p) || !starts_with(t, i, " ("))
        return 0;
    return state_found(t, i + 2, ')', start, stop, end);
}

/* Npgsql's "PostgresException (0x80004005): 23505:": \bPostgresException(?: \(0x[0-9A-F]{8}\))?: (state): */
static int npgsql_state_at(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end)
{
    if (!starts_with_folded(t, p, "postgresexception") || !boundary(t, p))
        return 0;
    Py_ssize_t i = p + 17, j;
    if (starts_with_folded(t, i, " (0x")) {
        for (j = i + 4; j < i + 12 && j < t->n && is_hex(AT(t, j)); j++)
            ;
        if (j == i + 12 && j < t->n && AT(t, j) == ')')
            i = j + 1;
    }
    if (!starts_with(t, i, ": "))
        return 0;
    return state_found(t, i + 2, ':', start, stop, end);
}

static int sqlstate_at(const Text *t, Py_ssize_t p, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *end)
{
    Py_ssize_t n = t->n, i, j;
    Py_UCS4 first = fold(AT(t, p));
    if (first >= '0' && first <= '9')
        return mysql_state_at(t, p, start, stop, end);
    if (first == 'p')
        return npgsql_state_at(t, p, start, stop, end);
    if (first != 's' || !starts_with_folded(t, p, "sql") || !boundary(t, p))
        return 0;
    i = p + 3;
    if (starts_with_folded(t, i, "state"))
        i += 5;
    else if (i < n && is_space(AT(t, i)) && starts_with_folded(t, i + 1, "state"))
        i += 6;
    else
        return 0;
    i = skip_spaces(t, i);
    if (i < n && (AT(t, i) == '[' || AT(t, i) == ':' || AT(t, i) == '='))
        i++;
    i = skip_spaces(t, i);
    if (i < n && AT(t, i) == '[')
        i++;
    i = skip_spaces(t, i);
    for (j = i; j < i + 5 && j < n; j++) {
        Py_UCS4 c = fold(AT(t, j));
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')))
            break;
    }
    if (j != i + 5 || !boundary(t, j))
        return 0;
    *start = i, *stop = j, *end = j;
    return 1;
}

static PyObject *sqlstate_values(PyObject *self, PyObject *text)
{
    return find_all(text, sqlstate_at, 0);
}

/* model.spell_identifiers(text): each run of [A-Za-z0-9_.$-] that the lookbehind
 * (?<![A-Za-z0-9_.$-]) lets start and that holds a separator [_.$-] or a lower-upper step
 * (the lookahead of model._IDENTIFIER) becomes its words, lower-case, joined by a space:
 * model._CAMEL.findall on it, [A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+ (all ASCII here). */
static inline int in_identifier_class(Py_UCS4 c)
{
    return is_ascii_alnum(c) || c == '_' || c == '.' || c == '$' || c == '-';
}

static inline int is_lower(Py_UCS4 c)
{
    return c >= 'a' && c <= 'z';
}

static int output_word(Output *out, const Text *t, Py_ssize_t start, Py_ssize_t stop, int *first)
{
    if (output_reserve(out, stop - start + 1) < 0)
        return -1;
    if (!*first)
        out->buffer[out->length++] = ' ';
    *first = 0;
    for (Py_ssize_t i = start; i < stop; i++) {
        Py_UCS4 c = AT(t, i);
        out->buffer[out->length++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    return 0;
}

/* The words of the identifier text[start:stop], as model._spelled writes them. */
static int output_spelled(Output *out, const Text *t, Py_ssize_t start, Py_ssize_t stop)
{
    int first = 1;
    Py_ssize_t i = start;
    while (i < stop) {
        Py_UCS4 c = AT(t, i);
        Py_ssize_t j = i;
        if (is_upper(c)) {
            while (j < stop && is_upper(AT(t, j)))
                j++;
            int lower_follows = j < stop && is_lower(AT(t, j));
            if (lower_follows && j - i >= 2)
                j--;  /* [A-Z]+(?=[A-Z][a-z]): the capitals but the one that starts the next word */
            else if (lower_follows)
                while (j < stop && is_lower(AT(t, j)))  /* [A-Z]?[a-z]+ */
                    j++;
            /* else [A-Z]+: the whole run */
        }
        else if (is_lower(c))
            while (j < stop && is_lower(AT(t, j)))
                j++;
        else if (c >= '0' && c <= '9')
            while (j < stop && AT(t, j) >= '0' && AT(t, j) <= '9')
                j++;
        else {
            i++;
            continue;
        }
        if (output_word(out, t, i, j, &first) < 0)
            return -1;
        i = j;
    }
    return 0;
}

static PyObject *spell_identifiers(PyObject *self, PyObject *text)
{
    Text t;
    if (prepare(text, &t) < 0)
        return NULL;
    Output out = {NULL, 0, 0};
    Py_ssize_t done = 0, p = 0;
    int changed = 0;
    while (p < t.n) {
        if (!in_identifier_class(AT(&t, p))) {
            p++;
            continue;
        }
        Py_ssize_t r = p;
        int spelled = 0;
        for (; r < t.n && in_identifier_class(AT(&t, r)); r++) {
            Py_UCS4 c = AT(&t, r);
            if (c == '_' || c == '.' || c == '$' || c == '-' || (is_lower(c) && r + 1 < t.n && is_upper(AT(&t, r + 1))))
                spelled = 1;
        }
        if (spelled) {
            if (output_text(&out, &t, done, p) < 0 || output_spelled(&out, &t, p, r) < 0) {
                PyMem_Free(out.buffer);
                return NULL;
            }
            done = r;
            changed = 1;
        }
        p = r;
    }
    return finish_output(&out, &t, done, text, changed);
}

/* classify._FRAME.search(line): a stack-frame line.
 *     ^\s+File "|^\s+at \S|^\s*\.\.\. \d+ more|^goroutine \d+ \[|\.go:\d+|^Traceback \(most recent */
static int is_frame_line(const Text *t, Py_ssize_t start, Py_ssize_t stop)
{
    Py_ssize_t i = start, j;
    while (i < stop && is_space(AT(t, i)))
        i++;
    Text line = {t->kind, t->data, stop};  /* the line ends the text for every test below */
    if (i > start && (starts_with(&line, i, "File \"") || (starts_with(&line, i, "at ") && i + 3 < stop
                                                             && !is_space(AT(t, i + 3)))))
        return 1;
    if (starts_with(&line, i, "... ")) {
        for (j = i + 4; j < stop && is_decimal(AT(t, j)); j++)
            ;
        if (j > i + 4 && starts_with(&line, j, " more"))
            return 1;
    }
    if (starts_with(&line, start, "goroutine ")) {
        for (j = start + 10; j < stop && is_decimal(AT(t, j)); j++)
            ;
        if (j > start + 10 && starts_with(&line, j, " ["))
            return 1;
    }
    if (starts_with(&line, start, "Traceback (most recent"))
        return 1;
    for (j = start; j + 4 < stop; j++)
        if (AT(t, j) == '.' && AT(t, j + 1) == 'g' && AT(t, j + 2) == 'o' && AT(t, j + 3) == ':'
            && is_decimal(AT(t, j + 4)))
            return 1;
    return 0;
}

/* classify.without_frames(message): its lines (str.splitlines) but the frame lines and the
 * source line after each Python "File ..." frame, joined by "\n". */
static PyObject *without_frames(PyObject *self, PyObject *message)
{
    if (!PyUnicode_Check(message)) {
        PyErr_SetString(PyExc_TypeError, "a str is required");
        return NULL;
    }
    PyObject *lines = PyUnicode_Splitlines(message, 0);
    if (lines == NULL)
        return NULL;
    PyObject *kept = PyList_New(0);
    if (kept == NULL) {
        Py_DECREF(lines);
        return NULL;
    }
    int skip_source = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(lines); k++) {
        PyObject *line = PyList_GET_ITEM(lines, k);
        Text t;
        if (prepare(line, &t) < 0)
            goto error;
        if (skip_source && starts_with(&t, 0, "    ")) {
            skip_source = 0;
            continue;
        }
        Py_ssize_t i = 0;
        while (i < t.n && is_space(AT(&t, i)))
            i++;
        skip_source = starts_with(&t, i, "File \"");
        if (!is_frame_line(&t, 0, t.n) && PyList_Append(kept, line) < 0)
            goto error;
    }
    Py_DECREF(lines);
    PyObject *separator = PyUnicode_FromString("\n");
    if (separator == NULL) {
        Py_DECREF(kept);
        return NULL;
    }
    PyObject *joined = PyUnicode_Join(separator, kept);
    Py_DECREF(separator);
    Py_DECREF(kept);
    return joined;
error:
    Py_DECREF(lines);
    Py_DECREF(kept);
    return NULL;
}

/* features(text): model.features(text), the same set built by the same steps in the same
 * order (so that it iterates in the same order, which the column sums add in):
 *     parts = identifier_words(text); text = normalize(text)
 *     found = set(word buckets of parts); found.update(bigram buckets of parts)
 *     words = _WORD.findall(text); found.update(their word buckets); found.update(their bigrams)
 *     found.update(*char gram frozensets of _ASCII_WORD.findall(text)); found.update(*CJK gram frozensets)
 * Buckets are zlib's CRC-32 continued from the kind's prefix ("w:", "b:", "c:", "z:"), modulo
 * model.BUCKETS. ``lower`` is str.lower (Unicode lower-casing stays Python's). */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc32_continue(uint32_t crc, const unsigned char *data, Py_ssize_t size)
{
    crc = ~crc;
    for (Py_ssize_t i = 0; i < size; i++)
        crc = crc_table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* Bytes of the UTF-8 encoding of code points, built up for one n-gram or word (no word the
 * features read can hold a lone surrogate: none is a letter, digit or CJK character). */
typedef struct {
    unsigned char *data;
    Py_ssize_t length, capacity;
} Bytes;

static int bytes_put(Bytes *b, Py_UCS4 c)
{
    if (b->length + 4 > b->capacity) {
        Py_ssize_t capacity = b->capacity * 2 + 64;
        unsigned char *grown = PyMem_Realloc(b->data, capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    unsigned char *out = b->data + b->length;
    if (c < 0x80) {
        out[0] = (unsigned char)c;
        b->length += 1;
    } else if (c < 0x800) {
        out[0] = 0xC0 | (c >> 6), out[1] = 0x80 | (c & 0x3F);
        b->length += 2;
    } else if (c < 0x10000) {
        out[0] = 0xE0 | (c >> 12), out[1] = 0x80 | ((c >> 6) & 0x3F), out[2] = 0x80 | (c & 0x3F);
        b->length += 3;
    } else {
        out[0] = 0xF0 | (c >> 18), out[1] = 0x80 | ((c >> 12) & 0x3F), out[2] = 0x80 | ((c >> 6) & 0x3F);
        out[3] = 0x80 | (c & 0x3F);
        b->length += 4;
    }
    return 0;
}

typedef struct {
    Py_ssize_t start, stop;
} Span;

typedef struct {
    Span *spans;
    Py_ssize_t length, capacity;
} Spans;

static int spans_put(Spans *list, Py_ssize_t start, Py_ssize_t stop)
{
    if (list->length == list->capacity) {
        Py_ssize_t capacity = list->capacity * 2 + 32;
        Span *grown = PyMem_Realloc(list->spans, capacity * sizeof(Span));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        list->spans = grown;
        list->capacity = capacity;
    }
    list->spans[list->length].start = start;
    list->spans[list->length].stop = stop;
    list->length++;
    return 0;
}

static uint32_t prefix_word, prefix_bigram, prefix_char, prefix_cjk;
#define BUCKETS (1u << 18)

static int encode_span(Bytes *b, const Py_UCS4 *chars, Span span)
{
    for (Py_ssize_t i = span.start; i < span.stop; i++)
        if (bytes_put(b, chars[i]) < 0)
            return -1;
    return 0;
}

/* CPython's own set of small ints, written out: the same table, the same probes, the same
 * resizes and merges as setobject.c (3.11) makes them for ``set.add`` and ``set |= frozenset``
 * of ints whose hash is the int itself, with nothing ever removed. Iterating its table gives a
 * feature set's order without building the set and its int objects (feature_probabilities). Where the
 * running Python lays its sets out otherwise, the module says so (INT_SET_ORDER_CHECKED is
 * checked against real sets by failured/classify.py at import, and by tests/test_speedups.py). */
#define SET_MINSIZE 8
#define LINEAR_PROBES 9
#define PERTURB_SHIFT 5

typedef struct {
    int32_t *table;  /* bucket, or -1 for an empty slot */
    size_t mask;
    Py_ssize_t fill, used;
    int32_t small[SET_MINSIZE];
} IntSet;

static void int_set_init(IntSet *s)
{
    s->table = s->small;
    s->mask = SET_MINSIZE - 1;
    s->fill = s->used = 0;
    memset(s->small, 0xFF, sizeof(s->small));
}

static void int_set_free(IntSet *s)
{
    if (s->table != s->small)
        PyMem_Free(s->table);
    s->table = s->small;
}

static void int_set_insert_clean(int32_t *table, size_t mask, int32_t key)
{
    size_t perturb = (size_t)key, i = (size_t)key & mask;
    for (;;) {
        int32_t *entry = &table[i];
        if (*entry < 0)
            goto found;
        if (i + LINEAR_PROBES <= mask)
            for (int j = 0; j < LINEAR_PROBES; j++) {
                entry++;
                if (*entry < 0)
                    goto found;
            }
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & mask;
        continue;
found:
        *entry = key;
        return;
    }
}

static int int_set_resize(IntSet *s, Py_ssize_t minused)
{
    size_t size = SET_MINSIZE;
    while (size <= (size_t)minused)
        size <<= 1;
    if (size == SET_MINSIZE && s->table == s->small)
        return 0;  /* no removals, so no dummies: CPython keeps the small table as it is */
    int32_t *old = s->table, small_copy[SET_MINSIZE];
    size_t old_mask = s->mask;
    if (old == s->small) {
        memcpy(small_copy, s->small, sizeof(small_copy));
        old = small_copy;
    }
    int32_t *grown = size == SET_MINSIZE ? s->small : PyMem_Malloc(size * sizeof(int32_t));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(grown, 0xFF, size * sizeof(int32_t));
    for (size_t i = 0; i <= old_mask; i++)
        if (old[i] >= 0)
            int_set_insert_clean(grown, size - 1, old[i]);
    if (old != small_copy)
        PyMem_Free(old);
    s->table = grown;
    s->mask = size - 1;
    s->fill = s->used;
    return 0;
}

static int int_set_add(IntSet *s, int32_t key)
{
    size_t mask = s->mask, i = (size_t)key & mask, perturb = (size_t)key;
    int32_t *entry;
    for (;;) {
        entry = &s->table[i];
        int probes = (i + LINEAR_PROBES <= mask) ? LINEAR_PROBES : 0;
        do {
            if (*entry < 0)
                goto unused;
            if (*entry == key)
                return 0;
            entry++;
        } while (probes--);
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & mask;
    }
unused:
    s->fill++;
    s->used++;
    *entry = key;
    if ((size_t)s->fill * 5 < mask * 3)
        return 0;
    return int_set_resize(s, s->used > 50000 ? s->used * 2 : s->used * 4);
}

/* set |= other (set_merge) */
static int int_set_merge(IntSet *s, const IntSet *other)
{
    if (other->used == 0)
        return 0;
    if ((size_t)(s->fill + other->used) * 5 >= s->mask * 3 && int_set_resize(s, (s->used + other->used) * 2) < 0)
        return -1;
    if (s->fill == 0 && s->mask == other->mask) {
        memcpy(s->table, other->table, (other->mask + 1) * sizeof(int32_t));
        s->fill = s->used = other->used;
        return 0;
    }
    if (s->fill == 0) {
        for (size_t i = 0; i <= other->mask; i++)
            if (other->table[i] >= 0)
                int_set_insert_clean(s->table, s->mask, other->table[i]);
        s->fill = s->used = other->used;
        return 0;
    }
    for (size_t i = 0; i <= other->mask; i++)
        if (other->table[i] >= 0 && int_set_add(s, other->table[i]) < 0)
            return -1;
    return 0;
}

/* Where features go: a Python set (features()) or its layout alone (feature_probabilities()). */
typedef struct {
    PyObject *set;
    IntSet *ints;
    uint64_t scan;  /* this scan's number (a layout merged in it is not merged again) */
} Sink;

static int add_bucket(Sink *sink, uint32_t crc)
{
    if (sink->set == NULL)
        return int_set_add(sink->ints, (int32_t)(crc % BUCKETS));
    PyObject *bucket = PyLong_FromUnsignedLong(crc % BUCKETS);
    if (bucket == NULL)
        return -1;
    int failed = PySet_Add(sink->set, bucket);
    Py_DECREF(bucket);
    return failed;
}

/* Word buckets of every word, then bigram buckets of each neighbouring pair, added in order. */
static int add_words_and_bigrams(Sink *set, const Py_UCS4 *chars, const Spans *words, Bytes *b)
{
    for (Py_ssize_t k = 0; k < words->length; k++) {
        b->length = 0;
        if (encode_span(b, chars, words->spans[k]) < 0 || add_bucket(set, crc32_continue(prefix_word, b->data, b->length)) < 0)
            return -1;
    }
    for (Py_ssize_t k = 0; k + 1 < words->length; k++) {
        b->length = 0;
        if (encode_span(b, chars, words->spans[k]) < 0 || bytes_put(b, ' ') < 0
            || encode_span(b, chars, words->spans[k + 1]) < 0
            || add_bucket(set, crc32_continue(prefix_bigram, b->data, b->length)) < 0)
            return -1;
    }
    return 0;
}

/* frozenset of crc(piece) for each n in ``sizes`` and each piece of n code points of ``chars``
 * (as model._char_grams pads an ASCII word with spaces, and model._cjk_grams reads a CJK run). */
static PyObject *grams(const Py_UCS4 *chars, Py_ssize_t length, const int *sizes, int count, uint32_t prefix, Bytes *b)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int s = 0; s < count; s++) {
        for (Py_ssize_t i = 0; i + sizes[s] <= length; i++) {
            b->length = 0;
            for (Py_ssize_t k = i; k < i + sizes[s]; k++)
                if (bytes_put(b, chars[k]) < 0)
                    goto error;
            PyObject *bucket = PyLong_FromUnsignedLong(crc32_continue(prefix, b->data, b->length) % BUCKETS);
            if (bucket == NULL || PyList_Append(list, bucket) < 0) {
                Py_XDECREF(bucket);
                goto error;
            }
            Py_DECREF(bucket);
        }
    }
    PyObject *frozen = PyFrozenSet_New(list);
    Py_DECREF(list);
    if (frozen != NULL)
        PyObject_GC_UnTrack(frozen);  /* ints only: no cycle can pass through it, and the cache keeps 65,536 */
    return frozen;
error:
    Py_DECREF(list);
    return NULL;
}

static int merge(PyObject *set, PyObject *other)
{
    if (other == NULL)
        return -1;
    PyObject *result = PyNumber_InPlaceOr(set, other);  /* set |= other: set.update's own merge */
    Py_DECREF(other);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Words recur from message to message: their char gram sets are kept (as model._char_grams
 * keeps them in an lru_cache), up to GRAM_CACHE_SIZE words, then the cache starts again. */
#define GRAM_CACHE_SIZE 65536
static PyObject *gram_cache;

static PyObject *cached_char_grams(const Py_UCS4 *padded, Py_ssize_t length, const int *sizes, Bytes *b)
{
    PyObject *key = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, padded, length);
    if (key == NULL)
        return NULL;
    PyObject *frozen = PyDict_GetItemWithError(gram_cache, key);
    if (frozen != NULL) {
        Py_INCREF(frozen);
        Py_DECREF(key);
        return frozen;
    }
    if (PyErr_Occurred() || (frozen = grams(padded, length, sizes, 2, prefix_char, b)) == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(gram_cache) >= GRAM_CACHE_SIZE)
        PyDict_Clear(gram_cache);
    int failed = PyDict_SetItem(gram_cache, key, frozen);
    Py_DECREF(key);
    if (failed < 0) {
        Py_DECREF(frozen);
        return NULL;
    }
    return frozen;
}

/* forget_words(): empty both word caches (the char gram frozensets and their layouts): training fills
 * them with a whole corpus's words, which a classifying process need not keep. */
static void layout_cache_clear(void);

static PyObject *forget_words(PyObject *self, PyObject *unused)
{
    PyDict_Clear(gram_cache);
    layout_cache_clear();
    Py_RETURN_NONE;
}

#define MODEL_MAX_CHARS 2000

static inline int is_cjk(Py_UCS4 c)
{
    return (c >= 0x3400 && c <= 0x9FFF) || (c >= 0xF900 && c <= 0xFAFF);
}

/* The layout of a frozenset made of each piece's bucket in turn (grams' pieces, into ``out``). */
static int int_set_grams(IntSet *out, const Py_UCS4 *chars, Py_ssize_t length, const int *sizes, int count,
                         uint32_t prefix, Bytes *b)
{
    for (int s = 0; s < count; s++)
        for (Py_ssize_t i = 0; i + sizes[s] <= length; i++) {
            b->length = 0;
            for (Py_ssize_t k = i; k < i + sizes[s]; k++)
                if (bytes_put(b, chars[k]) < 0)
                    return -1;
            if (int_set_add(out, (int32_t)(crc32_continue(prefix, b->data, b->length) % BUCKETS)) < 0)
                return -1;
        }
    return 0;
}

/* Words recur from message to message: the layout of each short word's char gram frozenset is
 * kept (as cached_char_grams keeps the frozensets), up to LAYOUT_CACHE_WORDS words, then the
 * cache starts again. Open addressing on a hash of the padded word. */
#define LAYOUT_CACHE_WORDS 16384
#define LAYOUT_CACHE_SLOTS (2 * LAYOUT_CACHE_WORDS)
#define LAYOUT_MAX_CHARS 48

typedef struct {
    Py_ssize_t length;  /* 0: an empty slot */
    unsigned char word[LAYOUT_MAX_CHARS];  /* an ASCII word padded with spaces (the only ones with char grams) */
    size_t mask;
    Py_ssize_t used;
    int32_t *table;
    uint64_t merged_in;  /* the feature_scan that last merged these grams (scans are numbered from 1) */
} Layout;

static Layout *layout_cache;
static Py_ssize_t layout_cache_words;
static uint64_t scan_number;

static void layout_cache_clear(void)
{
    if (layout_cache == NULL)
        return;
    for (Py_ssize_t i = 0; i < LAYOUT_CACHE_SLOTS; i++)
        if (layout_cache[i].length) {
            PyMem_Free(layout_cache[i].table);
            layout_cache[i].length = 0;
        }
    layout_cache_words = 0;
}

/* The cached layout of ``chars``' char grams, made now if absent; NULL with an exception set on
 * failure, NULL without one for a word that is not ASCII (not cached). */
static Layout *cached_layout(const Py_UCS4 *chars, Py_ssize_t length, const int *sizes, Bytes *b)
{
    if (layout_cache == NULL) {
        layout_cache = PyMem_Calloc(LAYOUT_CACHE_SLOTS, sizeof(Layout));
        if (layout_cache == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    unsigned char word[LAYOUT_MAX_CHARS];
    uint64_t hash = 1469598103934665603ull;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (chars[i] >= 128)
            return NULL;  /* not cached (never so: char grams are made of ASCII words) */
        word[i] = (unsigned char)chars[i];
        hash = (hash ^ chars[i]) * 1099511628211ull;
    }
    size_t slot = (size_t)(hash ^ (hash >> 29)) & (LAYOUT_CACHE_SLOTS - 1);
    for (;; slot = (slot + 1) & (LAYOUT_CACHE_SLOTS - 1)) {
        Layout *entry = &layout_cache[slot];
        if (entry->length == 0)
            break;
        if (entry->length == length && memcmp(entry->word, word, length) == 0)
            return entry;
    }
    if (layout_cache_words >= LAYOUT_CACHE_WORDS) {
        layout_cache_clear();
        return cached_layout(chars, length, sizes, b);
    }
    IntSet piece;
    int_set_init(&piece);
    if (int_set_grams(&piece, chars, length, sizes, 2, prefix_char, b) < 0) {
        int_set_free(&piece);
        return NULL;
    }
    int32_t *table = PyMem_Malloc((piece.mask + 1) * sizeof(int32_t));
    if (table == NULL) {
        int_set_free(&piece);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(table, piece.table, (piece.mask + 1) * sizeof(int32_t));
    Layout *entry = &layout_cache[slot];
    entry->merged_in = 0;
    entry->length = length;
    memcpy(entry->word, word, length);
    entry->mask = piece.mask;
    entry->used = piece.used;
    entry->table = table;
    layout_cache_words++;
    int_set_free(&piece);
    return entry;
}

/* found |= the grams' frozenset, in a Python set or in its layout (``cached``: char grams).
 *
 * A word met again in the same text merges grams the set already holds: set_merge then changes
 * nothing unless its size check makes it resize first ((fill + len(other)) * 5 >= mask * 3), so
 * the layout's merge is left out when that check would not. Long texts repeat most of their words. */
static int merge_grams(Sink *sink, const Py_UCS4 *chars, Py_ssize_t length, const int *sizes, int count,
                       uint32_t prefix, Bytes *b, int cached)
{
    if (sink->set != NULL)
        return merge(sink->set, cached ? cached_char_grams(chars, length, sizes, b)
                                       : grams(chars, length, sizes, count, prefix, b));
    Layout *layout = cached && length <= LAYOUT_MAX_CHARS ? cached_layout(chars, length, sizes, b) : NULL;
    if (layout == NULL && PyErr_Occurred())
        return -1;
    if (layout != NULL) {
        if (layout->merged_in == sink->scan && (size_t)(sink->ints->fill + layout->used) * 5 < sink->ints->mask * 3)
            return 0;
        layout->merged_in = sink->scan;
        IntSet view = {layout->table, layout->mask, layout->used, layout->used};
        return int_set_merge(sink->ints, &view);
    }
    IntSet piece;
    int_set_init(&piece);
    int failed = int_set_grams(&piece, chars, length, sizes, count, prefix, b) < 0
                 || int_set_merge(sink->ints, &piece) < 0;
    int_set_free(&piece);
    return failed ? -1 : 0;
}

/* model.features(text) into ``sink``: -1 with an exception set on failure. */
static int feature_scan(PyObject *text, Sink *sink)
{
    sink->scan = ++scan_number;  /* kept in the sink: another thread's scan may run while this one allocates */
    Text t;
    if (prepare(text, &t) < 0)
        return -1;
    int status = -1;
    PyObject *head = NULL, *lowered = NULL;
    Py_UCS4 *parts = NULL, *normal = NULL;
    Spans part_spans = {NULL, 0, 0}, word_spans = {NULL, 0, 0};
    Bytes b = {NULL, 0, 0};
    Py_ssize_t n = t.n < MODEL_MAX_CHARS ? t.n : MODEL_MAX_CHARS;

    /* identifier_words: the words of each identifier run, lower-case, as spans of ``parts`` */
    parts = PyMem_Malloc((n + 1) * sizeof(Py_UCS4));
    if (parts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t used = 0;
    for (Py_ssize_t p = 0; p < n;) {
        if (!in_identifier_class(AT(&t, p))) {
            p++;
            continue;
        }
        Py_ssize_t r = p;
        int spelled = 0;
        for (; r < n && in_identifier_class(AT(&t, r)); r++) {
            Py_UCS4 c = AT(&t, r);
            if (c == '_' || c == '.' || c == '$' || c == '-' || (is_lower(c) && r + 1 < n && is_upper(AT(&t, r + 1))))
                spelled = 1;
        }
        for (Py_ssize_t i = p; spelled && i < r;) {
            Py_UCS4 c = AT(&t, i);
            Py_ssize_t j = i;
            if (is_upper(c)) {
                while (j < r && is_upper(AT(&t, j)))
                    j++;
                int lower_follows = j < r && is_lower(AT(&t, j));
                if (lower_follows && j - i >= 2)
                    j--;
                else if (lower_follows)
                    while (j < r && is_lower(AT(&t, j)))
                        j++;
            }
            else if (is_lower(c))
                while (j < r && is_lower(AT(&t, j)))
                    j++;
            else if (c >= '0' && c <= '9')
                while (j < r && AT(&t, j) >= '0' && AT(&t, j) <= '9')
                    j++;
            else {
                i++;
                continue;
            }
            if (spans_put(&part_spans, used, used + (j - i)) < 0)
                goto done;
            for (; i < j; i++) {
                Py_UCS4 d = AT(&t, i);
                parts[used++] = (d >= 'A' && d <= 'Z') ? d + 32 : d;
            }
        }
        p = r;
    }

    /* normalize: text[:MAX_CHARS].lower(), then _HEX -> " 0x ", then _LONG_NUMBER -> " 000000 " */
    head = PyUnicode_Substring(text, 0, n);
    if (head == NULL)
        goto done;
    lowered = PyObject_CallMethod(head, "lower", NULL);
    if (lowered == NULL)
        goto done;
    Text low;
    if (prepare(lowered, &low) < 0)
        goto done;
    Output hexed = {NULL, 0, 0};
    for (Py_ssize_t p = 0, done_at = 0;; ) {
        if (p >= low.n) {
            if (output_text(&hexed, &low, done_at, low.n) < 0) {
                PyMem_Free(hexed.buffer);
                goto done;
            }
            break;
        }
        Py_UCS4 c = AT(&low, p);
        Py_ssize_t e = -1, j;
        if (c == '0' && p + 2 < low.n && AT(&low, p + 1) == 'x' && is_lower_hex(AT(&low, p + 2))) {
            for (j = p + 2; j < low.n && is_lower_hex(AT(&low, j)); j++)
                ;
            e = j;  /* 0x[0-9a-f]+ */
        } else if (is_lower_hex(c) && boundary(&low, p)) {
            for (j = p; j < low.n && is_lower_hex(AT(&low, j)); j++)
                ;
            if (j - p >= 12 && boundary(&low, j))
                e = j;  /* \b[0-9a-f]{12,}\b */
        }
        if (e < 0) {
            p++;
            continue;
        }
        if (output_text(&hexed, &low, done_at, p) < 0 || output_ascii(&hexed, " 0x ") < 0) {
            PyMem_Free(hexed.buffer);
            goto done;
        }
        done_at = p = e;
    }
    Text hx = {PyUnicode_4BYTE_KIND, hexed.buffer, hexed.length};
    Output numbered = {NULL, 0, 0};
    for (Py_ssize_t p = 0, done_at = 0;; ) {
        if (p >= hx.n) {
            if (output_text(&numbered, &hx, done_at, hx.n) < 0)
                goto numbers_failed;
            break;
        }
        if (!is_decimal(AT(&hx, p))) {
            p++;
            continue;
        }
        Py_ssize_t j = p;
        while (j < hx.n && is_decimal(AT(&hx, j)))
            j++;
        if (j - p < 6) {
            p = j;  /* \d{6,} cannot start inside a shorter run either */
            continue;
        }
        if (output_text(&numbered, &hx, done_at, p) < 0 || output_ascii(&numbered, " 000000 ") < 0)
            goto numbers_failed;
        done_at = p = j;
    }
    PyMem_Free(hexed.buffer);
    normal = numbered.buffer;
    Py_ssize_t normal_length = numbered.length;
    if (0) {
numbers_failed:
        PyMem_Free(hexed.buffer);
        PyMem_Free(numbered.buffer);
        goto done;
    }

    if (add_words_and_bigrams(sink, parts, &part_spans, &b) < 0)
        goto failed;

    /* _WORD: [a-z_][a-z0-9_]*|\d+ */
    for (Py_ssize_t p = 0; p < normal_length;) {
        Py_UCS4 c = normal[p];
        Py_ssize_t j = p;
        if ((c >= 'a' && c <= 'z') || c == '_') {
            for (j = p + 1; j < normal_length && ((normal[j] >= 'a' && normal[j] <= 'z') || (normal[j] >= '0' && normal[j] <= '9')
                                                   || normal[j] == '_'); j++)
                ;
        } else if (is_decimal(c)) {
            while (j < normal_length && is_decimal(normal[j]))
                j++;
        } else {
            p++;
            continue;
        }
        if (spans_put(&word_spans, p, j) < 0)
            goto failed;
        p = j;
    }
    if (add_words_and_bigrams(sink, normal, &word_spans, &b) < 0)
        goto failed;

    /* _ASCII_WORD: [a-z][a-z0-9_]+, each padded with spaces, its 3- and 4-grams */
    static const int char_sizes[] = {3, 4}, cjk_sizes[] = {1, 2, 3};
    Py_UCS4 *padded = NULL;
    Py_ssize_t padded_capacity = 0;
    for (Py_ssize_t p = 0; p < normal_length;) {
        Py_UCS4 c = normal[p];
        Py_ssize_t j = p + 1;
        if (!(c >= 'a' && c <= 'z')) {
            p++;
            continue;
        }
        while (j < normal_length && ((normal[j] >= 'a' && normal[j] <= 'z') || (normal[j] >= '0' && normal[j] <= '9') || normal[j] == '_'))
            j++;
        if (j - p < 2) {
            p++;
            continue;
        }
        if (j - p + 2 > padded_capacity) {
            padded_capacity = (j - p + 2) * 2;
            Py_UCS4 *grown = PyMem_Realloc(padded, padded_capacity * sizeof(Py_UCS4));
            if (grown == NULL) {
                PyErr_NoMemory();
                PyMem_Free(padded);
                goto failed;
            }
            padded = grown;
        }
        padded[0] = ' ';
        memcpy(padded + 1, normal + p, (j - p) * sizeof(Py_UCS4));
        padded[j - p + 1] = ' ';
        if (merge_grams(sink, padded, j - p + 2, char_sizes, 2, prefix_char, &b, 1) < 0) {
            PyMem_Free(padded);
            goto failed;
        }
        p = j;
    }
    PyMem_Free(padded);

    /* _CJK_RUN: [\u3400-\u9fff\uf900-\ufaff]+, its 1-, 2- and 3-grams */
    for (Py_ssize_t p = 0; p < normal_length;) {
        if (!is_cjk(normal[p])) {
            p++;
            continue;
        }
        Py_ssize_t j = p;
        while (j < normal_length && is_cjk(normal[j]))
            j++;
        if (merge_grams(sink, normal + p, j - p, cjk_sizes, 3, prefix_cjk, &b, 0) < 0)
            goto failed;
        p = j;
    }
    status = 0;
failed:
done:
    Py_XDECREF(head);
    Py_XDECREF(lowered);
    PyMem_Free(parts);
    PyMem_Free(normal);
    PyMem_Free(part_spans.spans);
    PyMem_Free(word_spans.spans);
    PyMem_Free(b.data);
    return status;
}

static PyObject *features(PyObject *self, PyObject *text)
{
    Sink sink = {PySet_New(NULL), NULL, 0};
    if (sink.set == NULL)
        return NULL;
    if (feature_scan(text, &sink) < 0)
        Py_CLEAR(sink.set);
    return sink.set;
}

/* The order of model.features(text) as CPython iterates the set: its buckets, in a list. */
static PyObject *feature_order(PyObject *self, PyObject *text)
{
    IntSet ints;
    int_set_init(&ints);
    Sink sink = {NULL, &ints, 0};
    PyObject *result = NULL;
    if (feature_scan(text, &sink) == 0 && (result = PyList_New(0)) != NULL)
        for (size_t i = 0; i <= ints.mask; i++) {
            if (ints.table[i] < 0)
                continue;
            PyObject *bucket = PyLong_FromLong(ints.table[i]);
            if (bucket == NULL || PyList_Append(result, bucket) < 0) {
                Py_XDECREF(bucket);
                Py_CLEAR(result);
                break;
            }
            Py_DECREF(bucket);
        }
    int_set_free(&ints);
    return result;
}

/* classify.exception_type_in(message): on the last non-blank line of a Python traceback, else
 * on the message, within its first 300 characters (MAX_TYPE_HEAD):
 *     ^\s*+((?:[A-Za-z_]\w*+(?:\.|::|\\))*+[A-Z]\w*+)\s*+:(?:\s|$)
 * (possessive: each part takes all it can and never gives back), then the name only if the
 * part after its last separator has an ASCII lower-case letter after its first character. */
#define MAX_TYPE_HEAD 300

static PyObject *type_in_line(PyObject *line)
{
    Text t;
    if (prepare(line, &t) < 0)
        return NULL;
    Py_ssize_t n = t.n < MAX_TYPE_HEAD ? t.n : MAX_TYPE_HEAD, i = 0, start, last;
    Text head = {t.kind, t.data, n};
    while (i < n && is_space(AT(&head, i)))
        i++;
    start = i;
    for (;;) {  /* (?:[A-Za-z_]\w*+(?:\.|::|\\))*+ */
        Py_ssize_t j = i;
        if (j >= n || !(is_letter(AT(&head, j)) || AT(&head, j) == '_'))
            break;
        for (j++; j < n && is_word(AT(&head, j)); j++)
            ;
        if (j < n && (AT(&head, j) == '.' || AT(&head, j) == '\\'))
            i = j + 1;
        else if (starts_with(&head, j, "::"))
            i = j + 2;
        else
            break;
    }
    last = i;
    if (i >= n || !is_upper(AT(&head, i)))  /* [A-Z]\w*+ */
        Py_RETURN_NONE;
    for (i++; i < n && is_word(AT(&head, i)); i++)
        ;
    Py_ssize_t stop = i;
    i = skip_spaces(&head, i);  /* \s*+:(?:\s|$) */
    if (i >= n || AT(&head, i) != ':')
        Py_RETURN_NONE;
    i++;
    if (!(i == n || is_space(AT(&head, i)) || (i == n - 1 && AT(&head, i) == '\n')))
        Py_RETURN_NONE;
    for (Py_ssize_t k = last + 1; k < stop; k++)
        if (is_lower(AT(&head, k)))
            return PyUnicode_Substring(line, start, stop);
    Py_RETURN_NONE;
}

static PyObject *exception_type_in(PyObject *self, PyObject *message)
{
    Text t;
    if (prepare(message, &t) < 0)
        return NULL;
    static const char traceback[] = "Traceback (most recent call last)";
    PyObject *needle = PyUnicode_FromString(traceback);
    if (needle == NULL)
        return NULL;
    Py_ssize_t found = PyUnicode_Find(message, needle, 0, t.n, 1);
    Py_DECREF(needle);
    if (found == -2)
        return NULL;
    if (found < 0)
        return type_in_line(message);
    PyObject *lines = PyUnicode_Splitlines(message, 0), *result = NULL;
    if (lines == NULL)
        return NULL;
    for (Py_ssize_t k = PyList_GET_SIZE(lines) - 1; k >= 0; k--) {  /* the last line that is not blank */
        PyObject *line = PyList_GET_ITEM(lines, k);
        Text l;
        if (prepare(line, &l) < 0)
            goto done;
        Py_ssize_t i = 0;
        while (i < l.n && is_space(AT(&l, i)))
            i++;
        if (i < l.n) {
            result = type_in_line(line);
            goto done;
        }
    }
    result = Py_None;  /* no line that is not blank: the empty text names no type */
    Py_INCREF(result);
done:
    Py_DECREF(lines);
    return result;
}

/* column_sums(slots, table, buckets, width): what failured/model.py's python_column_sums gives,
 *     packed = the rows of ``buckets`` (those with one) joined, as the stored floats (model.WEIGHT) read as doubles
 *     [sum(packed[k::width]) for k in range(width)]
 * without the joined buffer and the float objects (``slots`` and ``table``: see Rows below;
 * ``buckets`` an iterable of indices into ``slots``). Each column is added in
 * the order of ``buckets`` exactly as the running Python's sum() adds floats: 0 + the first
 * value, then plain additions before 3.12 and Neumaier's compensated ones since (an empty
 * column is the int 0, as sum() of nothing). */
typedef struct {
    double total, compensation;
    int count;
} Sum;

static inline void sum_add(Sum *sum, double x)
{
    if (sum->count++ == 0) {
        sum->total = 0.0 + x;
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    double t = sum->total + x;
    if (fabs(sum->total) >= fabs(x))
        sum->compensation += (sum->total - t) + x;
    else
        sum->compensation += (x - t) + sum->total;
    sum->total = t;
#else
    sum->total += x;
#endif
}

static PyObject *sum_result(const Sum *sum)
{
    if (sum->count == 0)
        return PyLong_FromLong(0);
    double total = sum->total;
#if PY_VERSION_HEX >= 0x030C0000
    if (sum->compensation && Py_IS_FINITE(sum->compensation))
        total += sum->compensation;
#endif
    return PyFloat_FromDouble(total);
}

/* A model's rows as model.TextModel keeps them: ``slots`` (an array('i'), one entry per bucket: the
 * index of its row in ``table``, or -1 for none) and ``table`` (the rows one after another, ``width``
 * 4-byte floats each: model.WEIGHT). A stored float is added as the double it converts to exactly,
 * as Python's sum() adds it after memoryview.cast("f"). */
typedef float Weight;

typedef struct {
    Py_buffer slots, table;
    Py_ssize_t buckets, count, width;  /* slots; rows in the table; weights a row */
} Rows;

static void rows_close(Rows *rows)
{
    if (rows->slots.obj != NULL)
        PyBuffer_Release(&rows->slots);
    if (rows->table.obj != NULL)
        PyBuffer_Release(&rows->table);
}

static int rows_open(Rows *rows, PyObject *slots, PyObject *table, Py_ssize_t width)
{
    rows->slots.obj = rows->table.obj = NULL;
    rows->width = width;
    if (width <= 0 || width > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Weight)) {  /* the row size must not overflow */
        PyErr_SetString(PyExc_ValueError, "width must be positive and fit a row in memory");
        return -1;
    }
    if (PyObject_GetBuffer(slots, &rows->slots, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (rows->slots.format == NULL || strcmp(rows->slots.format, "i") != 0) {
        PyErr_SetString(PyExc_TypeError, "slots must be an array('i')");
        goto error;
    }
    if (PyObject_GetBuffer(table, &rows->table, PyBUF_C_CONTIGUOUS) < 0)
        goto error;
    Py_ssize_t row = width * (Py_ssize_t)sizeof(Weight);
    if (rows->table.len % row != 0) {
        PyErr_Format(PyExc_ValueError, "the table has %zd bytes, not whole rows of %zd", rows->table.len, row);
        goto error;
    }
    rows->buckets = rows->slots.len / (Py_ssize_t)sizeof(int);
    rows->count = rows->table.len / row;
    return 0;
error:
    rows_close(rows);
    return -1;
}

/* The row of ``bucket`` into ``row`` (NULL: the bucket has none); -1 with an exception set when out of range. */
static int row_of(const Rows *rows, Py_ssize_t bucket, const char **row)
{
    if (bucket < 0 || bucket >= rows->buckets) {
        PyErr_Format(PyExc_IndexError, "bucket %zd out of range", bucket);
        return -1;
    }
    int slot = ((const int *)rows->slots.buf)[bucket];
    if (slot >= rows->count) {
        PyErr_Format(PyExc_IndexError, "bucket %zd points at row %d of a table of %zd", bucket, slot, rows->count);
        return -1;
    }
    *row = slot < 0 ? NULL : (const char *)rows->table.buf + (Py_ssize_t)slot * rows->width * (Py_ssize_t)sizeof(Weight);
    return 0;
}

static void add_row(Sum *sums, const char *row, Py_ssize_t width)
{
    for (Py_ssize_t k = 0; k < width; k++) {
        Weight x;
        memcpy(&x, row + k * sizeof(Weight), sizeof(Weight));
        sum_add(&sums[k], (double)x);
    }
}

static PyObject *column_sums(PyObject *self, PyObject *args)
{
    PyObject *slots, *table, *buckets, *iterator, *bucket, *result = NULL;
    Py_ssize_t width;
    Rows rows;
    if (!PyArg_ParseTuple(args, "OOOn:column_sums", &slots, &table, &buckets, &width) ||
        rows_open(&rows, slots, table, width) < 0)
        return NULL;
    Sum *sums = PyMem_Calloc(width, sizeof(Sum));
    if (sums == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    iterator = PyObject_GetIter(buckets);
    if (iterator == NULL)
        goto done;
    while ((bucket = PyIter_Next(iterator)) != NULL) {
        Py_ssize_t index = PyNumber_AsSsize_t(bucket, PyExc_IndexError);
        Py_DECREF(bucket);
        const char *row;
        if ((index == -1 && PyErr_Occurred()) || row_of(&rows, index, &row) < 0)
            break;
        if (row != NULL)
            add_row(sums, row, width);
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        goto done;
    result = PyList_New(width);
    if (result == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < width; k++) {
        PyObject *value = sum_result(&sums[k]);
        if (value == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, value);
    }
done:
    PyMem_Free(sums);
    rows_close(&rows);
    return result;
}

/* The features of ``text`` and each column of their rows summed in CPython's set order, into
 * ``sums`` (``rows->width`` of them); the number of features into ``count``. -1 with an exception set. */
static int summed_features(const Rows *rows, PyObject *text, Sum *sums, Py_ssize_t *count)
{
    IntSet ints;
    int_set_init(&ints);
    Sink sink = {NULL, &ints, 0};
    int status = -1;
    if (feature_scan(text, &sink) < 0)
        goto done;
    /* The rows lie anywhere in the table: ask for all of them before adding the first. */
    const int *slots = (const int *)rows->slots.buf;
    for (size_t i = 0; i <= ints.mask; i++)
        if (ints.table[i] >= 0 && ints.table[i] < rows->buckets)
            __builtin_prefetch(&slots[ints.table[i]]);
    const char *row;
    for (size_t i = 0; i <= ints.mask; i++)
        if (ints.table[i] >= 0 && ints.table[i] < rows->buckets && row_of(rows, ints.table[i], &row) == 0 && row) {
            __builtin_prefetch(row);  /* a row may cross into a second cache line */
            __builtin_prefetch(row + rows->width * (Py_ssize_t)sizeof(Weight) - 1);
        }
    if (PyErr_Occurred())
        goto done;
    for (size_t i = 0; i <= ints.mask; i++) {
        if (ints.table[i] < 0)
            continue;
        if (row_of(rows, ints.table[i], &row) < 0)
            goto done;
        if (row != NULL)
            add_row(sums, row, rows->width);
    }
    *count = ints.used;
    status = 0;
done:
    int_set_free(&ints);
    return status;
}

static double sum_value(const Sum *sum)
{
    if (sum->count == 0)
        return 0.0;
    double total = sum->total;
#if PY_VERSION_HEX >= 0x030C0000
    if (sum->compensation && Py_IS_FINITE(sum->compensation))
        total += sum->compensation;
#endif
    return total;
}

/* model._softmax(values), in place: exp(v - max(values)) each, divided by their sum (added left to right as
 * sum() adds them before 3.12, with Neumaier's compensation since). */
static void softmax_in_place(double *values, Py_ssize_t n)
{
    double top = values[0];
    for (Py_ssize_t k = 1; k < n; k++)
        if (values[k] > top)
            top = values[k];
    Sum total = {0.0, 0.0, 0};
    for (Py_ssize_t k = 0; k < n; k++) {
        values[k] = exp(values[k] - top);
        sum_add(&total, values[k]);
    }
    double divisor = sum_value(&total);
    for (Py_ssize_t k = 0; k < n; k++)
        values[k] = values[k] / divisor;
}

/* model.TextModel.probabilities(text) given its rows and bias:
 *     sums = the column sums of the features' rows (summed_features); n = len(bias)
 *     scale = 1.0 / math.sqrt(max(1, count))
 *     scores = [b + scale * s for b, s in zip(bias, sums)]
 * then the softmax: exp(s - max(scores)) each, divided by their sum (added left to right as sum()
 * adds them before 3.12, with Neumaier's compensation since): the same operations in the same
 * order on the same doubles. */
static PyObject *feature_probabilities(PyObject *self, PyObject *args)
{
    PyObject *slots, *table, *text, *bias, *result = NULL;
    Rows rows;
    if (!PyArg_ParseTuple(args, "OOUO!:feature_probabilities", &slots, &table, &text, &PyTuple_Type, &bias))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(bias), count = 0;
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "bias must have one value per class");
        return NULL;
    }
    if (rows_open(&rows, slots, table, n) < 0)
        return NULL;
    Sum *sums = PyMem_Calloc(n, sizeof(Sum));
    double *scores = PyMem_Calloc(n, sizeof(double));
    if (sums == NULL || scores == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (summed_features(&rows, text, sums, &count) < 0)
        goto done;
    double scale = 1.0 / sqrt((double)(count > 1 ? count : 1));
    for (Py_ssize_t k = 0; k < n; k++) {
        double b = PyFloat_AsDouble(PyTuple_GET_ITEM(bias, k));
        if (b == -1.0 && PyErr_Occurred())
            goto done;
        scores[k] = b + scale * sum_value(&sums[k]);
    }
    softmax_in_place(scores, n);
    result = PyList_New(n);
    for (Py_ssize_t k = 0; result != NULL && k < n; k++) {
        PyObject *value = PyFloat_FromDouble(scores[k]);
        if (value == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, k, value);
    }
done:
    PyMem_Free(sums);
    PyMem_Free(scores);
    rows_close(&rows);
    return result;
}

/* A writable buffer of doubles (``what`` names it in errors); its length in doubles in ``*count``. */
static int doubles_open(PyObject *obj, Py_buffer *view, const char *what, Py_ssize_t *count)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->format == NULL || strcmp(view->format, "d") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be an array('d')", what);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    *count = view->len / (Py_ssize_t)sizeof(double);
    return 0;
}

/* One step of lazy Adam on a batch of examples, in place: model._python_adam_batch, the same arithmetic in
 * the same order. ``batch`` is a list of (target, slots, scale): the example's class, its rows (an array('i'):
 * row s is weights[s * n : (s + 1) * n], its moments first[...] and second[...] alike) and its features'
 * scale. Every example is scored with the weights as they were before the step; the gradient of the mean
 * loss is summed per row, rows in the order the batch first names them, and only those rows move.
 * ``marks`` (an array('i') of one -1 per slot, left so) finds a row's gradient while the batch is summed. */
typedef struct {
    PyObject *batch;
    double *w, *first, *second;
    int *marks;
    Py_ssize_t n, slot_count;
} AdamStep;

static int adam_example(const AdamStep *a, PyObject *example, const int **slot, Py_ssize_t *count,
                        Py_ssize_t *target, double *scale, Py_buffer *view)
{
    if (!PyTuple_Check(example) || PyTuple_GET_SIZE(example) != 3) {
        PyErr_SetString(PyExc_TypeError, "an example must be a (target, slots, scale) tuple");
        return -1;
    }
    *target = PyLong_AsSsize_t(PyTuple_GET_ITEM(example, 0));
    if (*target == -1 && PyErr_Occurred())
        return -1;
    *scale = PyFloat_AsDouble(PyTuple_GET_ITEM(example, 2));
    if (*scale == -1.0 && PyErr_Occurred())
        return -1;
    if (*target < 0 || *target >= a->n) {
        PyErr_Format(PyExc_ValueError, "target %zd out of range for %zd classes", *target, a->n);
        return -1;
    }
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(example, 1), view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->format == NULL || strcmp(view->format, "i") != 0) {
        PyErr_SetString(PyExc_TypeError, "slots must be an array('i')");
        PyBuffer_Release(view);
        return -1;
    }
    *slot = view->buf;
    *count = view->len / (Py_ssize_t)sizeof(int);
    for (Py_ssize_t i = 0; i < *count; i++) {
        if ((*slot)[i] < 0 || (*slot)[i] >= a->slot_count) {
            PyErr_Format(PyExc_ValueError, "slot %d out of range for %zd slots", (*slot)[i], a->slot_count);
            PyBuffer_Release(view);
            return -1;
        }
    }
    return 0;
}

static PyObject *adam_batch(PyObject *self, PyObject *args)
{
    PyObject *batch, *weights_obj, *first_obj, *second_obj, *marks_obj;
    Py_ssize_t n;
    double learning_rate, beta1, beta2, epsilon, correction1, correction2;
    if (!PyArg_ParseTuple(args, "O!OOOOndddddd:adam_batch", &PyList_Type, &batch, &weights_obj, &first_obj,
                          &second_obj, &marks_obj, &n, &learning_rate, &beta1, &beta2, &epsilon, &correction1,
                          &correction2))
        return NULL;
    Py_buffer weights = {0}, first = {0}, second = {0}, marks = {0};
    double *gradients = NULL, *probs = NULL;
    int *touched = NULL;
    PyObject *result = NULL;
    Py_ssize_t weight_count, first_count, second_count, used = 0, capacity = 0;
    Py_ssize_t size = PyList_GET_SIZE(batch);
    if (n <= 0 || size == 0) {
        PyErr_SetString(PyExc_ValueError, "a step needs classes and at least one example");
        return NULL;
    }
    if (doubles_open(weights_obj, &weights, "weights", &weight_count) < 0 ||
        doubles_open(first_obj, &first, "first", &first_count) < 0 ||
        doubles_open(second_obj, &second, "second", &second_count) < 0)
        goto done;
    if (PyObject_GetBuffer(marks_obj, &marks, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    AdamStep a = {batch, weights.buf, first.buf, second.buf, marks.buf, n, marks.len / (Py_ssize_t)sizeof(int)};
    if (marks.format == NULL || strcmp(marks.format, "i") != 0 || weight_count != a.slot_count * n ||
        first_count != weight_count || second_count != weight_count) {
        PyErr_Format(PyExc_ValueError, "marks must be an array('i') of one per slot, weights and both moments "
                     "%zd doubles per slot", n);
        goto done;
    }
    for (Py_ssize_t e = 0; e < size; e++) {
        PyObject *example = PyList_GET_ITEM(batch, e);
        if (PyTuple_Check(example) && PyTuple_GET_SIZE(example) == 3)
            capacity += PyObject_Length(PyTuple_GET_ITEM(example, 1)) > 0 ? PyObject_Length(PyTuple_GET_ITEM(example, 1)) : 0;
    }
    PyErr_Clear();
    touched = PyMem_Calloc(capacity > 0 ? capacity : 1, sizeof(int));
    gradients = PyMem_Calloc((capacity > 0 ? capacity : 1) * n, sizeof(double));
    probs = PyMem_Calloc(n, sizeof(double));
    if (touched == NULL || gradients == NULL || probs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t e = 0; e < size; e++) {
        const int *slot;
        Py_ssize_t count, target;
        double scale;
        Py_buffer view;
        if (adam_example(&a, PyList_GET_ITEM(batch, e), &slot, &count, &target, &scale, &view) < 0)
            goto done;
        for (Py_ssize_t k = 0; k < n; k++) {
            Sum column = {0.0, 0.0, 0};
            for (Py_ssize_t i = 0; i < count; i++)
                sum_add(&column, a.w[(Py_ssize_t)slot[i] * n + k]);
            probs[k] = scale * sum_value(&column);
        }
        softmax_in_place(probs, n);
        for (Py_ssize_t i = 0; i < count; i++) {
            int s = slot[i], m = a.marks[s];
            /* A sparse set: a mark counts only where ``touched`` confirms it, whatever ``marks`` held before. */
            if (m < 0 || m >= used || touched[m] != s) {
                if (used == capacity) {  /* the examples' slots grew while we looked */
                    PyBuffer_Release(&view);
                    PyErr_SetString(PyExc_RuntimeError, "an example's slots changed during the step");
                    goto done;
                }
                m = a.marks[s] = (int)used;
                touched[used++] = s;
            }
            double *row = gradients + (Py_ssize_t)m * n;
            for (Py_ssize_t k = 0; k < n; k++)
                row[k] += scale * (probs[k] - (k == target ? 1.0 : 0.0)) / (double)size;
        }
        PyBuffer_Release(&view);
    }
    for (Py_ssize_t j = 0; j < used; j++) {
        int s = touched[j];
        const double *row = gradients + j * n;
        for (Py_ssize_t k = 0; k < n; k++) {
            Py_ssize_t i = (Py_ssize_t)s * n + k;
            double g = row[k];
            a.first[i] = beta1 * a.first[i] + (1.0 - beta1) * g;
            a.second[i] = beta2 * a.second[i] + (1.0 - beta2) * g * g;
            a.w[i] -= learning_rate * (a.first[i] / correction1) / (sqrt(a.second[i] / correction2) + epsilon);
        }
    }
    result = Py_NewRef(Py_None);
done:
    if (touched != NULL && marks.obj != NULL)
        for (Py_ssize_t j = 0; j < used; j++)
            ((int *)marks.buf)[touched[j]] = -1;
    PyMem_Free(touched);
    PyMem_Free(gradients);
    PyMem_Free(probs);
    if (weights.obj != NULL)
        PyBuffer_Release(&weights);
    if (first.obj != NULL)
        PyBuffer_Release(&first);
    if (second.obj != NULL)
        PyBuffer_Release(&second);
    if (marks.obj != NULL)
        PyBuffer_Release(&marks);
    return result;
}

static PyMethodDef methods[] = {
    {"uuid_pass", uuid_pass, METH_O, "The <uuid> replacement pass."},
    {"quoted_pass", quoted_pass, METH_O, "The <str> replacement pass (quoted values)."},
    {"quoted_in_head", quoted_in_head, METH_VARARGS, "fingerprint._quoted_in_head(text) (reach: _STR_REACH)."},
    {"ip_pass", ip_pass, METH_O, "The IPv4 <ip> replacement pass."},
    {"windows_path_pass", windows_path_pass, METH_O, "The Windows <path> replacement pass."},
    {"host_pass", host_pass, METH_O, "The <host> replacement pass (RE2's, with _host_or_keep)."},
    {"hex_pass", hex_pass, METH_O, "The <hex> replacement pass (with _hex_or_keep)."},
    {"id_pass", id_pass, METH_O, "The <id> replacement pass (with _id_or_keep)."},
    {"number_pass", number_pass, METH_O, "The <num> replacement pass."},
    {"tokens", tokens, METH_O, "codes._TOKEN.findall(text)."},
    {"known_tokens", known_tokens, METH_VARARGS, "The values of codes.extract_tokens(text) that ``known`` holds."},
    {"errno_values", errno_values, METH_O, "The first non-empty group of each codes._ERRNO match."},
    {"grpc_values", grpc_values, METH_O, "The first non-empty group of each codes._GRPC match."},
    {"http_statuses", http_statuses, METH_O, "(start, status) of each codes._HTTP match."},
    {"sqlstate_values", sqlstate_values, METH_O, "The first non-empty group of each codes._SQLSTATE match."},
    {"spell_identifiers", spell_identifiers, METH_O, "model.spell_identifiers(text)."},
    {"without_frames", without_frames, METH_O, "classify.without_frames(message)."},
    {"opaque_pass", opaque_pass, METH_O, "classify.python_opaque_folded(text): each opaque token made \" 0x \"."},
    {"forget_words", forget_words, METH_NOARGS, "Empty the word caches features() and the layouts keep."},
    {"features", features, METH_O, "model.features(text): the same set, built in the same order."},
    {"feature_order", feature_order, METH_O, "list(model.features(text)) without the set (CPython's order)."},
    {"adam_batch", adam_batch, METH_VARARGS, "model._python_adam_batch: one lazy Adam step on a batch."},
    {"feature_probabilities", feature_probabilities, METH_VARARGS,
     "model.TextModel.probabilities from its rows and bias."},
    {"exception_type_in", exception_type_in, METH_O, "classify.exception_type_in(message)."},
    {"column_sums", column_sums, METH_VARARGS, "The learned model's per-class sums over a message's rows."},
    {NULL, NULL, 0, NULL},
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 "" /* built without setup.py: failured/speedups.py leaves it unused where the source is present */
#endif

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "failured._speedups",
    "Compiled replacement passes of the fingerprint, code finders and the model's features and sums.", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    crc_init();
    prefix_word = crc32_continue(0, (const unsigned char *)"w:", 2);
    prefix_bigram = crc32_continue(0, (const unsigned char *)"b:", 2);
    prefix_char = crc32_continue(0, (const unsigned char *)"c:", 2);
    prefix_cjk = crc32_continue(0, (const unsigned char *)"z:", 2);
    gram_cache = PyDict_New();
    if (gram_cache == NULL)
        return NULL;
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && PyModule_AddStringConstant(created, "source_sha256", SOURCE_SHA256) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
