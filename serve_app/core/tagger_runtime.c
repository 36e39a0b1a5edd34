/*
 * Runs NeMo's compiled tagger grammar over one text: the best path of (text o tagger), its output.
 *
 * Why this exists: pynini composes the text with NeMo's tagger (161k states, 138k arcs that insert
 * markup without reading input) by expanding every branch those markup arcs open at each token start,
 * and most of them die a character later. That is 90% of the time spoken-form text takes. Here the
 * text is a line, so the composition is a walk over text positions that only enters a tagger state
 * when the state can read the next character (label lookahead: a 256-bit set per state of the first
 * bytes it can read through markup arcs). Same grammar, same weights, same best path, a fraction of
 * the states visited. The function releases nothing and holds no Python state: the caller (ctypes)
 * drops the GIL while it runs, so replicas' event loops and other windows keep going.
 *
 * File format (little-endian), written by serve_app/core/tagger_runtime.py from the pynini FST:
 *   "NTG1", int32 num_states, int32 num_arcs, int32 start,
 *   int32 arc_offset[num_states + 1], int32 ilabel[num_arcs], int32 olabel[num_arcs],
 *   float weight[num_arcs], int32 nextstate[num_arcs], float final[num_states] (inf: not final).
 * Arcs of a state are sorted by input label, input-epsilon (0) first. Labels are bytes (1..255).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t bits[4];
} LabelSet;

typedef struct {
    int32_t state;
    int32_t prev;
    int32_t olabel;
    float dist;
} Entry;

typedef struct Scratch {
    uint32_t *mark; /* generation that last added the state to a level */
    int32_t *where; /* its entry index in that generation */
    uint8_t *queued;
    Entry *entries;
    int32_t *queue;
    size_t entries_cap;
    size_t queue_cap;
    uint32_t generation;
    struct Scratch *next_free;
} Scratch;

typedef struct {
    int32_t num_states, num_arcs, start;
    int32_t *arc_offset, *ilabel, *olabel, *nextstate;
    float *weight, *final_weight;
    LabelSet *first; /* bytes a state can read next, through input-epsilon arcs */
    uint8_t *can_end; /* a final state is reachable through input-epsilon arcs */
    pthread_mutex_t lock;
    Scratch *free_scratch;
} Tagger;

static int read_all(FILE *f, void *dst, size_t size, size_t count) {
    return fread(dst, size, count, f) == count;
}

static void tagger_free_arrays(Tagger *t) {
    free(t->arc_offset);
    free(t->ilabel);
    free(t->olabel);
    free(t->nextstate);
    free(t->weight);
    free(t->final_weight);
    free(t->first);
    free(t->can_end);
}

/* Fixed point over input-epsilon arcs, driven by a worklist of reverse epsilon edges. */
static int compute_lookahead(Tagger *t) {
    int32_t n = t->num_states;
    int32_t *eps_count = calloc((size_t)n + 1, sizeof(int32_t));
    if (!eps_count) return 0;
    for (int32_t s = 0; s < n; s++) {
        for (int32_t a = t->arc_offset[s]; a < t->arc_offset[s + 1]; a++) {
            int32_t label = t->ilabel[a];
            if (label == 0) {
                eps_count[t->nextstate[a] + 1]++;
            } else {
                t->first[s].bits[label >> 6] |= (uint64_t)1 << (label & 63);
            }
        }
        t->can_end[s] = isinf(t->final_weight[s]) ? 0 : 1;
    }
    for (int32_t s = 0; s < n; s++) eps_count[s + 1] += eps_count[s];
    int32_t total = eps_count[n];
    int32_t *pred = malloc(sizeof(int32_t) * (size_t)(total > 0 ? total : 1));
    int32_t *fill = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *work = malloc(sizeof(int32_t) * (size_t)n);
    uint8_t *in_work = calloc((size_t)n, 1);
    if (!pred || !fill || !work || !in_work) {
        free(eps_count); free(pred); free(fill); free(work); free(in_work);
        return 0;
    }
    memcpy(fill, eps_count, sizeof(int32_t) * (size_t)n);
    for (int32_t s = 0; s < n; s++) {
        for (int32_t a = t->arc_offset[s]; a < t->arc_offset[s + 1] && t->ilabel[a] == 0; a++) {
            pred[fill[t->nextstate[a]]++] = s;
        }
    }
    /* A circular worklist of states whose sets grew; their epsilon predecessors take them in. */
    int32_t head = 0, size = 0;
    for (int32_t s = 0; s < n; s++) {
        work[s] = s;
        in_work[s] = 1;
    }
    size = n;
    while (size > 0) {
        int32_t s = work[head];
        head = (head + 1) % n;
        size--;
        in_work[s] = 0;
        for (int32_t k = eps_count[s]; k < eps_count[s + 1]; k++) {
            int32_t p = pred[k];
            int changed = 0;
            for (int w = 0; w < 4; w++) {
                uint64_t merged = t->first[p].bits[w] | t->first[s].bits[w];
                if (merged != t->first[p].bits[w]) {
                    t->first[p].bits[w] = merged;
                    changed = 1;
                }
            }
            if (t->can_end[s] && !t->can_end[p]) {
                t->can_end[p] = 1;
                changed = 1;
            }
            if (changed && !in_work[p]) {
                work[(head + size) % n] = p;
                size++;
                in_work[p] = 1;
            }
        }
    }
    free(eps_count); free(pred); free(fill); free(work); free(in_work);
    return 1;
}

void *tg_load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char magic[4];
    Tagger *t = calloc(1, sizeof(Tagger));
    if (!t || !read_all(f, magic, 1, 4) || memcmp(magic, "NTG1", 4) != 0 || !read_all(f, &t->num_states, 4, 1) ||
        !read_all(f, &t->num_arcs, 4, 1) || !read_all(f, &t->start, 4, 1) || t->num_states <= 0 || t->num_arcs < 0 ||
        t->start < 0 || t->start >= t->num_states) {
        fclose(f);
        free(t);
        return NULL;
    }
    size_t ns = (size_t)t->num_states, na = (size_t)t->num_arcs;
    t->arc_offset = malloc(4 * (ns + 1));
    t->ilabel = malloc(4 * (na + 1));
    t->olabel = malloc(4 * (na + 1));
    t->weight = malloc(4 * (na + 1));
    t->nextstate = malloc(4 * (na + 1));
    t->final_weight = malloc(4 * ns);
    t->first = calloc(ns, sizeof(LabelSet));
    t->can_end = calloc(ns, 1);
    int ok = t->arc_offset && t->ilabel && t->olabel && t->weight && t->nextstate && t->final_weight && t->first &&
             t->can_end && read_all(f, t->arc_offset, 4, ns + 1) && read_all(f, t->ilabel, 4, na) &&
             read_all(f, t->olabel, 4, na) && read_all(f, t->weight, 4, na) && read_all(f, t->nextstate, 4, na) &&
             read_all(f, t->final_weight, 4, ns);
    fclose(f);
    if (ok) {
        /* Reject anything the walk below could index out of bounds with. */
        ok = t->arc_offset[0] == 0 && t->arc_offset[ns] == t->num_arcs;
        for (size_t s = 0; ok && s < ns; s++) ok = t->arc_offset[s] <= t->arc_offset[s + 1];
        for (size_t a = 0; ok && a < na; a++) {
            ok = t->ilabel[a] >= 0 && t->ilabel[a] < 256 && t->olabel[a] >= 0 && t->olabel[a] < 256 &&
                 t->nextstate[a] >= 0 && t->nextstate[a] < t->num_states;
        }
        for (size_t s = 0; ok && s < ns; s++) {
            for (int32_t a = t->arc_offset[s] + 1; ok && a < t->arc_offset[s + 1]; a++) ok = t->ilabel[a - 1] <= t->ilabel[a];
        }
    }
    if (!ok || !compute_lookahead(t)) {
        tagger_free_arrays(t);
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

static void scratch_free(Scratch *s) {
    if (!s) return;
    free(s->mark);
    free(s->where);
    free(s->queued);
    free(s->entries);
    free(s->queue);
    free(s);
}

void tg_free(void *handle) {
    Tagger *t = handle;
    if (!t) return;
    while (t->free_scratch) {
        Scratch *s = t->free_scratch;
        t->free_scratch = s->next_free;
        scratch_free(s);
    }
    pthread_mutex_destroy(&t->lock);
    tagger_free_arrays(t);
    free(t);
}

/* One scratch per concurrent call, kept for reuse: the per-state arrays are never cleared, a fresh
 * generation number per text level marks which entries are current. */
static Scratch *scratch_take(Tagger *t) {
    pthread_mutex_lock(&t->lock);
    Scratch *s = t->free_scratch;
    if (s) t->free_scratch = s->next_free;
    pthread_mutex_unlock(&t->lock);
    if (s) return s;
    s = calloc(1, sizeof(Scratch));
    if (!s) return NULL;
    size_t ns = (size_t)t->num_states;
    s->mark = calloc(ns, sizeof(uint32_t));
    s->where = malloc(ns * sizeof(int32_t));
    s->queued = calloc(ns, 1);
    s->entries_cap = 4096;
    s->entries = malloc(s->entries_cap * sizeof(Entry));
    s->queue_cap = 4096;
    s->queue = malloc(s->queue_cap * sizeof(int32_t));
    if (!s->mark || !s->where || !s->queued || !s->entries || !s->queue) {
        scratch_free(s);
        return NULL;
    }
    return s;
}

static void scratch_give(Tagger *t, Scratch *s) {
    pthread_mutex_lock(&t->lock);
    s->next_free = t->free_scratch;
    t->free_scratch = s;
    pthread_mutex_unlock(&t->lock);
}

static uint32_t next_generation(Scratch *s, int32_t num_states) {
    if (++s->generation == 0) {
        memset(s->mark, 0, sizeof(uint32_t) * (size_t)num_states);
        s->generation = 1;
    }
    return s->generation;
}

static int can_continue(const Tagger *t, int32_t state, const unsigned char *text, int32_t pos, int32_t length) {
    if (pos == length) return t->can_end[state];
    unsigned char c = text[pos];
    return (int)((t->first[state].bits[c >> 6] >> (c & 63)) & 1);
}

/* Relax `state` at the level of generation `gen` with distance `dist`; returns its entry index, -1 when
 * nothing changed, -2 when out of memory or over the entry budget. */
static int32_t relax(Scratch *s, uint32_t gen, size_t *count, size_t max_entries, int32_t state, float dist,
                     int32_t prev, int32_t olabel) {
    if (s->mark[state] == gen) {
        Entry *e = &s->entries[s->where[state]];
        if (!(dist < e->dist)) return -1;
        e->dist = dist;
        e->prev = prev;
        e->olabel = olabel;
        return s->where[state];
    }
    if (*count >= max_entries) return -2;
    if (*count == s->entries_cap) {
        size_t cap = s->entries_cap * 2;
        Entry *grown = realloc(s->entries, cap * sizeof(Entry));
        if (!grown) return -2;
        s->entries = grown;
        s->entries_cap = cap;
    }
    int32_t index = (int32_t)(*count)++;
    s->entries[index] = (Entry){state, prev, olabel, dist};
    s->mark[state] = gen;
    s->where[state] = index;
    s->queued[state] = 0;
    return index;
}

static int push(Scratch *s, size_t *tail, int32_t index) {
    if (*tail == s->queue_cap) {
        size_t cap = s->queue_cap * 2;
        int32_t *grown = realloc(s->queue, cap * sizeof(int32_t));
        if (!grown) return 0;
        s->queue = grown;
        s->queue_cap = cap;
    }
    s->queue[(*tail)++] = index;
    return 1;
}

/*
 * Best output of `text` through the tagger, written to `out` (no terminator).
 * Returns its length; -1 when no path accepts the text; -2 when `out` is too small (`*needed` then
 * holds the length to ask for); -3 when the walk
 * passed `max_entries` states or ran out of memory (the caller falls back to the library's own
 * composition); -4 on bad arguments.
 */
int32_t tg_tag(void *handle, const unsigned char *text, int32_t length, unsigned char *out, int32_t capacity,
               int32_t max_entries, int32_t *needed) {
    Tagger *t = handle;
    if (!t || !text || length < 0 || !out || capacity < 0 || max_entries <= 0) return -4;
    for (int32_t i = 0; i < length; i++) {
        if (text[i] == 0) return -4;
    }
    Scratch *s = scratch_take(t);
    if (!s) return -3;
    int32_t result = -1;
    size_t count = 0, limit = (size_t)max_entries;
    uint32_t gen = next_generation(s, t->num_states);
    size_t level_begin = 0;
    if (can_continue(t, t->start, text, 0, length) && relax(s, gen, &count, limit, t->start, 0.0f, -1, 0) < 0) {
        result = -3;
        goto done;
    }
    for (int32_t pos = 0;; pos++) {
        /* Input-epsilon closure of this level: label-correcting (the grammar has negative weights). */
        size_t head = 0, tail = 0;
        for (size_t e = level_begin; e < count; e++) {
            if (!push(s, &tail, (int32_t)e)) { result = -3; goto done; }
            s->queued[s->entries[e].state] = 1;
        }
        while (head < tail) {
            int32_t index = s->queue[head++];
            int32_t state = s->entries[index].state;
            s->queued[state] = 0;
            float dist = s->entries[index].dist;
            for (int32_t a = t->arc_offset[state]; a < t->arc_offset[state + 1] && t->ilabel[a] == 0; a++) {
                int32_t next = t->nextstate[a];
                if (!can_continue(t, next, text, pos, length)) continue;
                int32_t changed = relax(s, gen, &count, limit, next, dist + t->weight[a], index, t->olabel[a]);
                if (changed == -2) { result = -3; goto done; }
                if (changed >= 0 && !s->queued[next]) {
                    s->queued[next] = 1;
                    if (!push(s, &tail, changed)) { result = -3; goto done; }
                }
            }
        }
        if (pos == length) break;
        /* Read text[pos]: arcs are sorted by input label, so find its run by binary search. */
        size_t level_end = count;
        uint32_t next_gen = next_generation(s, t->num_states);
        int32_t label = text[pos];
        for (size_t e = level_begin; e < level_end; e++) {
            int32_t state = s->entries[e].state;
            float dist = s->entries[e].dist;
            int32_t lo = t->arc_offset[state], hi = t->arc_offset[state + 1];
            while (lo < hi) {
                int32_t mid = lo + (hi - lo) / 2;
                if (t->ilabel[mid] < label) lo = mid + 1; else hi = mid;
            }
            for (int32_t a = lo; a < t->arc_offset[state + 1] && t->ilabel[a] == label; a++) {
                int32_t next = t->nextstate[a];
                if (!can_continue(t, next, text, pos + 1, length)) continue;
                if (relax(s, next_gen, &count, limit, next, dist + t->weight[a], (int32_t)e, t->olabel[a]) == -2) {
                    result = -3;
                    goto done;
                }
            }
        }
        level_begin = level_end;
        gen = next_gen;
        if (level_begin == count) goto done; /* nothing can read the rest: no path */
    }
    {
        int32_t best = -1;
        float best_dist = INFINITY;
        for (size_t e = level_begin; e < count; e++) {
            float f = t->final_weight[s->entries[e].state];
            if (isinf(f)) continue;
            float d = s->entries[e].dist + f;
            if (d < best_dist) {
                best_dist = d;
                best = (int32_t)e;
            }
        }
        if (best < 0) goto done;
        int32_t written = 0;
        size_t steps = 0;
        for (int32_t e = best; e >= 0; e = s->entries[e].prev) {
            if (++steps > count) { /* a cycle of back-pointers: only a negative-weight cycle makes one */
                result = -3;
                goto done;
            }
            if (s->entries[e].olabel != 0) written++;
        }
        if (written > capacity) {
            if (needed) *needed = written;
            result = -2;
            goto done;
        }
        int32_t k = written;
        for (int32_t e = best; e >= 0; e = s->entries[e].prev) {
            if (s->entries[e].olabel != 0) out[--k] = (unsigned char)s->entries[e].olabel;
        }
        result = written;
    }
done:
    scratch_give(t, s);
    return result;
}

int32_t tg_num_states(void *handle) {
    Tagger *t = handle;
    return t ? t->num_states : -1;
}
