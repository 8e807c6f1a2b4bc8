/*
 * health.c - the health aggregator.
 *
 * Owns: a hash table name -> entry (one heap block per tracked breaker), two
 * intrusive lists threading the entries (fresh, ordered by last touch, oldest
 * first; stale, unordered), running sums over the fresh entries, a lazily
 * rebuilt name-sorted index for reports, a fixed snapshot ring and a fixed
 * table of callback slots.
 *
 * Invariants (under mu):
 *   - den  = sum of w_units over fresh entries; num2 = sum of w_units * v2,
 *     v2 = 2 (closed/disabled), 1 (half open), 0 (open/forced open); so the
 *     score is num2 / (2 * den) exactly. Thresholds are compared in 128-bit
 *     integers against millionths: no floating-point rounding at 0.7 / 0.5.
 *   - n_closed + n_half + n_open + n_stale == tracked.
 *   - fresh list is ordered by touch_mono (the clock is read under mu), so
 *     expiring stale entries pops from its head: amortised O(1).
 *   - the published status / score / seq change only in evaluate_locked(),
 *     which runs once at the end of every mutating call and records at most
 *     one pending change; the caller dispatches it after unlocking.
 *
 * Threading: one mutex. Callbacks are called by dispatch() with no lock
 * held; a slot's busy count keeps it alive (and unreusable) while a call is
 * under way, and af_health_remove_callback waits on cb_idle for it to drop
 * to zero unless it runs inside a callback itself (thread-local depth).
 */
#include "af/health.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "af/alloc.h"

#define UNITS_PER_WEIGHT 1000000.0
#define MILLIONTHS INT64_C(1000000)
#define HEALTHY_U INT64_C(700000)
#define DEGRADED_U INT64_C(500000)
#define SCORE_EPSILON 1e-9

__extension__ typedef __int128 wide_t;

typedef struct entry {
  struct entry *hnext;
  struct entry *prev, *next; /* fresh or stale list */
  uint64_t hash;
  uint64_t w_units;
  double weight;
  uint64_t touch_mono;
  int64_t touch_wall;
  af_breaker_state_t state;
  bool stale;
  uint64_t sort_key; /* first 8 name bytes, big-endian: orders like strcmp */
  size_t name_len;
  char name[AF_NAME_MAX + 1];
} entry_t;

typedef struct {
  entry_t *head, *tail;
} list_t;

typedef struct {
  af_health_callback_fn fn;
  void *ctx;
  int id;
  bool used;
  bool removed;
  bool status_only;
  unsigned busy;
} cb_slot_t;

typedef struct {
  bool fire;
  af_health_change_t c;
} pending_t;

struct af_health {
  pthread_mutex_t mu;
  pthread_cond_t cb_idle;
  af_health_config_t cfg;
  uint64_t interval_ns;
  uint64_t stale_ns; /* 0 = off */
  int64_t hyst_u;

  entry_t **buckets;
  size_t nbuckets; /* power of two */
  size_t tracked;
  list_t fresh, stale;

  uint64_t den, num2;
  size_t n_closed, n_half, n_open, n_stale;
  /* sum of name_len + 1 per report list, so a report needs one pass */
  size_t bytes_half, bytes_open, bytes_stale;

  bool evaluated;
  af_health_status_t status;
  double score;
  uint64_t pub_num2, pub_den;
  uint64_t seq;

  entry_t **sorted;
  size_t sorted_len, sorted_cap;
  bool sorted_dirty;

  af_health_snapshot_t *ring;
  size_t ring_head, ring_len;
  uint64_t next_due;

  cb_slot_t cbs[AF_HEALTH_MAX_CALLBACKS];
  int next_id;

  uint64_t snapshots_collected, callbacks_fired, callback_errors, recomputes;
};

static _Thread_local int tls_callback_depth;

/* ---- pure helpers ------------------------------------------------------ */

const char *af_health_status_name(af_health_status_t s)
{
  switch (s) {
  case AF_HEALTH_UNKNOWN:
    return "UNKNOWN";
  case AF_HEALTH_HEALTHY:
    return "HEALTHY";
  case AF_HEALTH_DEGRADED:
    return "DEGRADED";
  case AF_HEALTH_CRITICAL:
    return "CRITICAL";
  }
  return "UNKNOWN";
}

af_health_status_t af_health_status_for_score(double score)
{
  if (isnan(score))
    return AF_HEALTH_CRITICAL;
  if (score >= AF_HEALTH_HEALTHY_THRESHOLD - SCORE_EPSILON)
    return AF_HEALTH_HEALTHY;
  if (score >= AF_HEALTH_DEGRADED_THRESHOLD - SCORE_EPSILON)
    return AF_HEALTH_DEGRADED;
  return AF_HEALTH_CRITICAL;
}

static bool state_valid(af_breaker_state_t s)
{
  return (int)s >= 0 && (int)s < AF_BREAKER_STATE_COUNT;
}

static bool weight_valid(double w)
{
  return isfinite(w) && w >= AF_HEALTH_WEIGHT_MIN && w <= AF_HEALTH_WEIGHT_MAX;
}

static uint64_t weight_units(double w)
{
  long long u = llround(w * UNITS_PER_WEIGHT);
  return u < 1 ? 1 : (uint64_t)u;
}

static uint64_t value2(af_breaker_state_t s)
{
  switch (s) {
  case AF_BREAKER_CLOSED:
  case AF_BREAKER_DISABLED:
    return 2;
  case AF_BREAKER_HALF_OPEN:
    return 1;
  case AF_BREAKER_OPEN:
  case AF_BREAKER_FORCED_OPEN:
    return 0;
  }
  return 0;
}

static uint64_t ms_to_ns(uint64_t ms)
{
  return ms > UINT64_MAX / AF_NS_PER_MS ? UINT64_MAX : ms * AF_NS_PER_MS;
}

static uint64_t hash_name(const char *s, size_t *len)
{
  uint64_t hv = UINT64_C(14695981039346656037);
  size_t n = 0;
  for (; s[n] != '\0'; n++) {
    hv ^= (unsigned char)s[n];
    hv *= UINT64_C(1099511628211);
  }
  *len = n;
  return hv;
}

/* score >= t_u / 1e6, exactly. */
static bool score_at_least(uint64_t num2, uint64_t den, int64_t t_u)
{
  return (wide_t)num2 * MILLIONTHS >= (wide_t)t_u * 2 * (wide_t)den;
}

static af_health_status_t band(uint64_t num2, uint64_t den, int64_t shift_u)
{
  if (score_at_least(num2, den, HEALTHY_U + shift_u))
    return AF_HEALTH_HEALTHY;
  if (score_at_least(num2, den, DEGRADED_U + shift_u))
    return AF_HEALTH_DEGRADED;
  return AF_HEALTH_CRITICAL;
}

static int rank(af_health_status_t s)
{
  return s == AF_HEALTH_HEALTHY ? 2 : s == AF_HEALTH_DEGRADED ? 1 : 0;
}

/* ---- config ------------------------------------------------------------ */

void af_health_config_init(af_health_config_t *cfg)
{
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof(*cfg));
  cfg->clock = NULL;
  cfg->has_registry = true;
  cfg->check_interval_ms = 1000;
  cfg->history_size = 300;
  cfg->history_window_ms = 300000;
  cfg->stale_after_ms = 0;
  cfg->hysteresis = 0.0;
  cfg->max_tracked = 1000000;
}

static af_status_t config_validate(const af_health_config_t *cfg,
                                   af_error_t *err)
{
  if (cfg->check_interval_ms < 1)
    return af_error_set(err, AF_EINVAL, "health_check_interval must be > 0");
  if (cfg->history_size < 1)
    return af_error_set(err, AF_EINVAL, "history_size must be >= 1");
  if (!(cfg->hysteresis >= 0.0 && cfg->hysteresis <= 0.2))
    return af_error_set(err, AF_EINVAL,
                        "hysteresis must be between 0.0 and 0.2");
  if (cfg->max_tracked < 1)
    return af_error_set(err, AF_EINVAL, "max_tracked must be >= 1");
  return AF_OK;
}

af_status_t af_health_create(af_health_t **out, const af_health_config_t *cfg,
                             af_error_t *err)
{
  af_health_config_t defaults;
  if (out == NULL)
    return af_error_set(err, AF_EINVAL, "out must not be NULL");
  if (cfg == NULL) {
    af_health_config_init(&defaults);
    cfg = &defaults;
  }
  af_status_t rc = config_validate(cfg, err);
  if (rc != AF_OK)
    return rc;

  af_health_t *h = af_calloc(1, sizeof(*h));
  if (h == NULL)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  h->cfg = *cfg;
  h->nbuckets = 64;
  h->buckets = af_calloc(h->nbuckets, sizeof(*h->buckets));
  h->ring = af_calloc(cfg->history_size, sizeof(*h->ring));
  if (h->buckets == NULL || h->ring == NULL)
    goto nomem;
  if (pthread_mutex_init(&h->mu, NULL) != 0)
    goto nomem;
  if (pthread_cond_init(&h->cb_idle, NULL) != 0) {
    pthread_mutex_destroy(&h->mu);
    goto nomem;
  }
  h->interval_ns = ms_to_ns(cfg->check_interval_ms);
  h->stale_ns = ms_to_ns(cfg->stale_after_ms);
  h->hyst_u = (int64_t)llround(cfg->hysteresis * UNITS_PER_WEIGHT);
  h->status = cfg->has_registry ? AF_HEALTH_HEALTHY : AF_HEALTH_UNKNOWN;
  h->score = cfg->has_registry ? 1.0 : 0.0;
  h->pub_num2 = cfg->has_registry ? 2 : 0;
  h->pub_den = 1;
  h->next_due = af_clock_mono_ns(cfg->clock);
  h->next_id = 1;
  *out = h;
  return AF_OK;

nomem:
  af_free(h->buckets);
  af_free(h->ring);
  af_free(h);
  return af_error_set(err, AF_ENOMEM, "out of memory");
}

void af_health_destroy(af_health_t *h)
{
  if (h == NULL)
    return;
  list_t *lists[2] = {&h->fresh, &h->stale};
  for (int i = 0; i < 2; i++) {
    entry_t *e = lists[i]->head;
    while (e != NULL) {
      entry_t *next = e->next;
      af_free(e);
      e = next;
    }
  }
  af_free(h->buckets);
  af_free(h->sorted);
  af_free(h->ring);
  pthread_cond_destroy(&h->cb_idle);
  pthread_mutex_destroy(&h->mu);
  af_free(h);
}

/* ---- lists, sums, table (all under mu) ---------------------------------- */

static void list_remove(list_t *l, entry_t *e)
{
  if (e->prev != NULL)
    e->prev->next = e->next;
  else
    l->head = e->next;
  if (e->next != NULL)
    e->next->prev = e->prev;
  else
    l->tail = e->prev;
  e->prev = e->next = NULL;
}

static void list_append(list_t *l, entry_t *e)
{
  e->next = NULL;
  e->prev = l->tail;
  if (l->tail != NULL)
    l->tail->next = e;
  else
    l->head = e;
  l->tail = e;
}

static void sums_add(af_health_t *h, const entry_t *e)
{
  h->den += e->w_units;
  h->num2 += e->w_units * value2(e->state);
  switch (value2(e->state)) {
  case 2:
    h->n_closed++;
    break;
  case 1:
    h->n_half++;
    h->bytes_half += e->name_len + 1;
    break;
  default:
    h->n_open++;
    h->bytes_open += e->name_len + 1;
    break;
  }
}

static void sums_sub(af_health_t *h, const entry_t *e)
{
  h->den -= e->w_units;
  h->num2 -= e->w_units * value2(e->state);
  switch (value2(e->state)) {
  case 2:
    h->n_closed--;
    break;
  case 1:
    h->n_half--;
    h->bytes_half -= e->name_len + 1;
    break;
  default:
    h->n_open--;
    h->bytes_open -= e->name_len + 1;
    break;
  }
}

/* Moves fresh entries untouched for more than stale_after to the stale
 * list. Each entry goes stale at most once per touch: amortised O(1). */
static void expire_stale_locked(af_health_t *h, uint64_t now)
{
  if (h->stale_ns == 0)
    return;
  entry_t *e;
  while ((e = h->fresh.head) != NULL && now > e->touch_mono &&
         now - e->touch_mono > h->stale_ns) {
    list_remove(&h->fresh, e);
    sums_sub(h, e);
    e->stale = true;
    h->n_stale++;
    h->bytes_stale += e->name_len + 1;
    list_append(&h->stale, e);
  }
}

static void touch_locked(af_health_t *h, entry_t *e, uint64_t now)
{
  if (e->stale) {
    list_remove(&h->stale, e);
    e->stale = false;
    h->n_stale--;
    h->bytes_stale -= e->name_len + 1;
    sums_add(h, e);
  } else {
    list_remove(&h->fresh, e);
  }
  e->touch_mono = now;
  e->touch_wall = af_clock_wall_ns(h->cfg.clock);
  list_append(&h->fresh, e);
}

static entry_t *lookup_locked(af_health_t *h, const char *name)
{
  size_t len;
  uint64_t hv = hash_name(name, &len);
  for (entry_t *e = h->buckets[hv & (h->nbuckets - 1)]; e != NULL;
       e = e->hnext) {
    if (e->hash == hv && e->name_len == len && memcmp(e->name, name, len) == 0)
      return e;
  }
  return NULL;
}

static af_status_t grow_table_locked(af_health_t *h)
{
  size_t n = h->nbuckets * 2;
  entry_t **nb = af_calloc(n, sizeof(*nb));
  if (nb == NULL)
    return AF_ENOMEM;
  for (size_t i = 0; i < h->nbuckets; i++) {
    entry_t *e = h->buckets[i];
    while (e != NULL) {
      entry_t *next = e->hnext;
      size_t b = (size_t)(e->hash & (n - 1));
      e->hnext = nb[b];
      nb[b] = e;
      e = next;
    }
  }
  af_free(h->buckets);
  h->buckets = nb;
  h->nbuckets = n;
  return AF_OK;
}

static void table_unlink_locked(af_health_t *h, entry_t *e)
{
  entry_t **pp = &h->buckets[e->hash & (h->nbuckets - 1)];
  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
}

/* ---- evaluation ---------------------------------------------------------- */

static af_health_status_t status_with_hysteresis(af_health_t *h, uint64_t num2,
                                                 uint64_t den)
{
  af_health_status_t plain = band(num2, den, 0);
  if (!h->evaluated || h->hyst_u == 0 || h->status == AF_HEALTH_UNKNOWN)
    return plain;
  af_health_status_t up = band(num2, den, h->hyst_u);
  af_health_status_t down = band(num2, den, -h->hyst_u);
  int cur = rank(h->status);
  if (cur < rank(up))
    return up;
  if (cur > rank(down))
    return down;
  return h->status;
}

/* Publishes the current sums; records the change (if any) in *p. */
static void evaluate_locked(af_health_t *h, pending_t *p)
{
  uint64_t num2, den;
  af_health_status_t st;
  h->recomputes++;
  if (!h->cfg.has_registry) {
    num2 = 0;
    den = 1;
    st = AF_HEALTH_UNKNOWN;
  } else if (h->den == 0) {
    num2 = 2;
    den = 1;
    st = AF_HEALTH_HEALTHY;
  } else {
    num2 = h->num2;
    den = h->den;
    st = status_with_hysteresis(h, num2, den);
  }
  bool first = !h->evaluated;
  bool score_changed =
      (wide_t)num2 * (wide_t)h->pub_den != (wide_t)h->pub_num2 * (wide_t)den;
  bool status_changed = first || st != h->status;
  if (!first && !score_changed && !status_changed) {
    p->fire = false;
    return;
  }
  double score = (double)num2 / (2.0 * (double)den);
  p->fire = true;
  p->c.old_status = first ? AF_HEALTH_UNKNOWN : h->status;
  p->c.old_score = first ? 0.0 : h->score;
  p->c.new_status = st;
  p->c.score = score;
  p->c.status_changed = status_changed;
  p->c.seq = ++h->seq;
  h->evaluated = true;
  h->status = st;
  h->score = score;
  h->pub_num2 = num2;
  h->pub_den = den;
}

/* Called with no lock held. */
static void dispatch(af_health_t *h, const pending_t *p)
{
  if (!p->fire)
    return;
  struct {
    cb_slot_t *slot;
    af_health_callback_fn fn;
    void *ctx;
  } calls[AF_HEALTH_MAX_CALLBACKS];
  size_t n = 0;
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < AF_HEALTH_MAX_CALLBACKS; i++) {
    cb_slot_t *s = &h->cbs[i];
    if (!s->used || s->removed || (s->status_only && !p->c.status_changed))
      continue;
    s->busy++;
    calls[n].slot = s;
    calls[n].fn = s->fn;
    calls[n].ctx = s->ctx;
    n++;
  }
  pthread_mutex_unlock(&h->mu);
  if (n == 0)
    return;

  uint64_t errors = 0;
  tls_callback_depth++;
  for (size_t i = 0; i < n; i++) {
    if (calls[i].fn(&p->c, calls[i].ctx) != 0)
      errors++;
  }
  tls_callback_depth--;

  pthread_mutex_lock(&h->mu);
  h->callbacks_fired += n;
  h->callback_errors += errors;
  bool wake = false;
  for (size_t i = 0; i < n; i++) {
    cb_slot_t *s = calls[i].slot;
    if (--s->busy == 0 && s->removed) {
      s->used = false;
      wake = true;
    }
  }
  if (wake)
    pthread_cond_broadcast(&h->cb_idle);
  pthread_mutex_unlock(&h->mu);
}

/* ---- feeding ------------------------------------------------------------- */

af_status_t af_health_track(af_health_t *h, const char *name,
                            af_breaker_state_t state, double weight)
{
  if (h == NULL || name == NULL || !af_name_valid(name) ||
      !state_valid(state) || !weight_valid(weight))
    return AF_EINVAL;
  pending_t p = {0};
  af_status_t rc = AF_OK;
  pthread_mutex_lock(&h->mu);
  uint64_t now = af_clock_mono_ns(h->cfg.clock);
  expire_stale_locked(h, now);
  entry_t *e = NULL;
  if (lookup_locked(h, name) != NULL) {
    rc = AF_EEXIST;
  } else if (h->tracked >= h->cfg.max_tracked) {
    rc = AF_ELIMIT;
  } else if (h->tracked + 1 > h->nbuckets / 4 * 3 &&
             (rc = grow_table_locked(h)) != AF_OK) {
    /* rc set */
  } else if ((e = af_calloc(1, sizeof(*e))) == NULL) {
    rc = AF_ENOMEM;
  }
  if (rc == AF_OK) {
    e->hash = hash_name(name, &e->name_len);
    memcpy(e->name, name, e->name_len + 1);
    for (size_t i = 0; i < 8; i++)
      e->sort_key = (e->sort_key << 8) |
                    (i < e->name_len ? (unsigned char)e->name[i] : 0u);
    e->state = state;
    e->weight = weight;
    e->w_units = weight_units(weight);
    size_t b = (size_t)(e->hash & (h->nbuckets - 1));
    e->hnext = h->buckets[b];
    h->buckets[b] = e;
    h->tracked++;
    e->touch_mono = now;
    e->touch_wall = af_clock_wall_ns(h->cfg.clock);
    list_append(&h->fresh, e);
    sums_add(h, e);
    /* Keep the sorted index valid when names arrive in order. */
    if (!h->sorted_dirty && h->sorted_len < h->sorted_cap &&
        (h->sorted_len == 0 ||
         strcmp(h->sorted[h->sorted_len - 1]->name, e->name) < 0))
      h->sorted[h->sorted_len++] = e;
    else
      h->sorted_dirty = true;
  }
  evaluate_locked(h, &p);
  pthread_mutex_unlock(&h->mu);
  dispatch(h, &p);
  return rc;
}

af_status_t af_health_untrack(af_health_t *h, const char *name)
{
  if (h == NULL || name == NULL)
    return AF_EINVAL;
  pending_t p = {0};
  af_status_t rc = AF_OK;
  pthread_mutex_lock(&h->mu);
  expire_stale_locked(h, af_clock_mono_ns(h->cfg.clock));
  entry_t *e = af_name_valid(name) ? lookup_locked(h, name) : NULL;
  if (e == NULL) {
    rc = AF_ENOTFOUND;
  } else {
    table_unlink_locked(h, e);
    if (e->stale) {
      list_remove(&h->stale, e);
      h->n_stale--;
      h->bytes_stale -= e->name_len + 1;
    } else {
      list_remove(&h->fresh, e);
      sums_sub(h, e);
    }
    h->tracked--;
    h->sorted_dirty = true;
    af_free(e);
  }
  evaluate_locked(h, &p);
  pthread_mutex_unlock(&h->mu);
  dispatch(h, &p);
  return rc;
}

typedef enum { OP_STATE, OP_WEIGHT, OP_TOUCH } op_t;

static af_status_t update(af_health_t *h, const char *name, op_t op,
                          af_breaker_state_t state, double weight)
{
  if (h == NULL || name == NULL)
    return AF_EINVAL;
  if ((op == OP_STATE && !state_valid(state)) ||
      (op == OP_WEIGHT && !weight_valid(weight)))
    return AF_EINVAL;
  pending_t p = {0};
  af_status_t rc = AF_OK;
  pthread_mutex_lock(&h->mu);
  uint64_t now = af_clock_mono_ns(h->cfg.clock);
  expire_stale_locked(h, now);
  entry_t *e = af_name_valid(name) ? lookup_locked(h, name) : NULL;
  if (e == NULL) {
    rc = AF_ENOTFOUND;
  } else {
    if (op != OP_WEIGHT)
      touch_locked(h, e, now); /* may move it back into the sums */
    if (op != OP_TOUCH) {
      if (!e->stale)
        sums_sub(h, e);
      if (op == OP_STATE) {
        e->state = state;
      } else {
        e->weight = weight;
        e->w_units = weight_units(weight);
      }
      if (!e->stale)
        sums_add(h, e);
    }
  }
  evaluate_locked(h, &p);
  pthread_mutex_unlock(&h->mu);
  dispatch(h, &p);
  return rc;
}

af_status_t af_health_set_state(af_health_t *h, const char *name,
                                af_breaker_state_t state)
{
  return update(h, name, OP_STATE, state, 0.0);
}

af_status_t af_health_set_weight(af_health_t *h, const char *name,
                                 double weight)
{
  return update(h, name, OP_WEIGHT, AF_BREAKER_CLOSED, weight);
}

af_status_t af_health_touch(af_health_t *h, const char *name)
{
  return update(h, name, OP_TOUCH, AF_BREAKER_CLOSED, 0.0);
}

/* ---- reading ------------------------------------------------------------- */

typedef struct {
  uint64_t key;
  entry_t *e;
} sort_item_t;

/* Keys decide most comparisons without touching the (scattered) entries. */
static int cmp_sort_item(const void *a, const void *b)
{
  const sort_item_t *x = a, *y = b;
  if (x->key != y->key)
    return x->key < y->key ? -1 : 1;
  return strcmp(x->e->name, y->e->name);
}

static af_status_t ensure_sorted_locked(af_health_t *h)
{
  if (!h->sorted_dirty && h->sorted_len == h->tracked)
    return AF_OK;
  if (h->sorted_cap < h->tracked) {
    size_t cap = h->tracked < 64 ? 64 : h->tracked + h->tracked / 2;
    entry_t **s = af_realloc(h->sorted, cap * sizeof(*s));
    if (s == NULL)
      return AF_ENOMEM;
    h->sorted = s;
    h->sorted_cap = cap;
  }
  size_t n = 0;
  sort_item_t *items = NULL;
  if (h->tracked > 0) {
    items = af_malloc(h->tracked * sizeof(*items));
    if (items == NULL)
      return AF_ENOMEM;
  }
  list_t *lists[2] = {&h->fresh, &h->stale};
  for (int l = 0; l < 2; l++)
    for (entry_t *e = lists[l]->head; e != NULL; e = e->next) {
      items[n].key = e->sort_key;
      items[n].e = e;
      n++;
    }
  if (n > 1)
    qsort(items, n, sizeof(*items), cmp_sort_item);
  for (size_t i = 0; i < n; i++)
    h->sorted[i] = items[i].e;
  af_free(items);
  h->sorted_len = n;
  h->sorted_dirty = false;
  return AF_OK;
}

/* One block: count pointers, then the strings they point into. */
static char **name_list_alloc(size_t count, size_t bytes, char **strings)
{
  if (count == 0)
    return NULL;
  char **list = af_malloc(count * sizeof(char *) + bytes);
  if (list != NULL)
    *strings = (char *)(list + count);
  return list;
}

static void name_list_put(char **list, size_t *i, char **cursor,
                          const entry_t *e)
{
  memcpy(*cursor, e->name, e->name_len + 1);
  list[(*i)++] = *cursor;
  *cursor += e->name_len + 1;
}

af_status_t af_health_report(af_health_t *h, af_health_report_t *out)
{
  if (h == NULL || out == NULL)
    return AF_EINVAL;
  memset(out, 0, sizeof(*out));
  pending_t p = {0};
  af_status_t rc;
  pthread_mutex_lock(&h->mu);
  uint64_t now = af_clock_mono_ns(h->cfg.clock);
  expire_stale_locked(h, now);
  evaluate_locked(h, &p);
  rc = ensure_sorted_locked(h);
  if (rc == AF_OK) {
    size_t bytes[3] = {h->bytes_half, h->bytes_open, h->bytes_stale};
    char *cur[3] = {NULL, NULL, NULL};
    out->degraded = name_list_alloc(h->n_half, bytes[0], &cur[0]);
    out->critical = name_list_alloc(h->n_open, bytes[1], &cur[1]);
    out->stale_names = name_list_alloc(h->n_stale, bytes[2], &cur[2]);
    if (h->sorted_len > 0)
      out->breakers = af_malloc(h->sorted_len * sizeof(*out->breakers));
    if ((h->n_half > 0 && out->degraded == NULL) ||
        (h->n_open > 0 && out->critical == NULL) ||
        (h->n_stale > 0 && out->stale_names == NULL) ||
        (h->sorted_len > 0 && out->breakers == NULL)) {
      rc = AF_ENOMEM;
    } else {
      for (size_t i = 0; i < h->sorted_len; i++) {
        const entry_t *e = h->sorted[i];
        af_health_breaker_t *b = &out->breakers[i];
        memcpy(b->name, e->name, e->name_len + 1);
        b->state = e->state;
        b->weight = e->weight;
        b->stale = e->stale;
        b->last_touch_wall_ns = e->touch_wall;
        if (e->stale)
          name_list_put(out->stale_names, &out->stale_count, &cur[2], e);
        else if (value2(e->state) == 1)
          name_list_put(out->degraded, &out->degraded_count, &cur[0], e);
        else if (value2(e->state) == 0)
          name_list_put(out->critical, &out->critical_count, &cur[1], e);
      }
      out->breaker_count = h->sorted_len;
      out->status = h->status;
      out->score = h->score;
      out->total = h->tracked;
      out->closed = h->n_closed;
      out->half_open = h->n_half;
      out->open = h->n_open;
      out->stale = h->n_stale;
      out->mono_ns = now;
      out->wall_ns = af_clock_wall_ns(h->cfg.clock);
      out->seq = h->seq;
    }
  }
  pthread_mutex_unlock(&h->mu);
  if (rc != AF_OK)
    af_health_report_free(out);
  dispatch(h, &p);
  return rc;
}

void af_health_report_free(af_health_report_t *r)
{
  if (r == NULL)
    return;
  af_free(r->degraded);
  af_free(r->critical);
  af_free(r->stale_names);
  af_free(r->breakers);
  memset(r, 0, sizeof(*r));
}

void af_health_summary(af_health_t *h, af_health_status_t *status,
                       double *score, uint64_t *seq)
{
  af_health_status_t st = AF_HEALTH_UNKNOWN;
  double sc = 0.0;
  uint64_t sq = 0;
  if (h != NULL) {
    pthread_mutex_lock(&h->mu);
    st = h->status;
    sc = h->score;
    sq = h->seq;
    pthread_mutex_unlock(&h->mu);
  }
  if (status != NULL)
    *status = st;
  if (score != NULL)
    *score = sc;
  if (seq != NULL)
    *seq = sq;
}

/* ---- snapshots ----------------------------------------------------------- */

static void snapshot_locked(af_health_t *h, uint64_t now)
{
  af_health_snapshot_t s;
  s.wall_ns = af_clock_wall_ns(h->cfg.clock);
  s.mono_ns = now;
  s.status = h->status;
  s.score = h->score;
  s.total = h->tracked;
  s.closed = h->n_closed;
  s.half_open = h->n_half;
  s.open = h->n_open;
  size_t cap = h->cfg.history_size;
  if (h->ring_len < cap) {
    h->ring[(h->ring_head + h->ring_len) % cap] = s;
    h->ring_len++;
  } else {
    h->ring[h->ring_head] = s;
    h->ring_head = (h->ring_head + 1) % cap;
  }
  h->snapshots_collected++;
}

uint64_t af_health_tick(af_health_t *h)
{
  if (h == NULL)
    return UINT64_MAX;
  pending_t p = {0};
  pthread_mutex_lock(&h->mu);
  uint64_t now = af_clock_mono_ns(h->cfg.clock);
  expire_stale_locked(h, now);
  evaluate_locked(h, &p);
  if (now >= h->next_due) {
    snapshot_locked(h, now);
    h->next_due =
        now > UINT64_MAX - h->interval_ns ? UINT64_MAX : now + h->interval_ns;
  }
  uint64_t due = h->next_due;
  pthread_mutex_unlock(&h->mu);
  dispatch(h, &p);
  return due;
}

af_status_t af_health_snapshot_now(af_health_t *h)
{
  if (h == NULL)
    return AF_EINVAL;
  pending_t p = {0};
  pthread_mutex_lock(&h->mu);
  uint64_t now = af_clock_mono_ns(h->cfg.clock);
  expire_stale_locked(h, now);
  evaluate_locked(h, &p);
  snapshot_locked(h, now);
  pthread_mutex_unlock(&h->mu);
  dispatch(h, &p);
  return AF_OK;
}

af_status_t af_health_history(af_health_t *h, uint64_t window_ms,
                              af_health_snapshot_t **out, size_t *n)
{
  if (h == NULL || out == NULL || n == NULL)
    return AF_EINVAL;
  uint64_t window = window_ms == 0 ? h->cfg.history_window_ms : window_ms;
  pthread_mutex_lock(&h->mu);
  size_t cap = h->cfg.history_size;
  size_t first = 0;
  if (window != 0 && window != UINT64_MAX) {
    uint64_t now = af_clock_mono_ns(h->cfg.clock);
    uint64_t span = ms_to_ns(window);
    uint64_t cutoff = now > span ? now - span : 0;
    /* Snapshots are in mono order: skip the old prefix. */
    while (first < h->ring_len &&
           h->ring[(h->ring_head + first) % cap].mono_ns < cutoff)
      first++;
  }
  size_t count = h->ring_len - first;
  af_health_snapshot_t *arr = NULL;
  if (count > 0) {
    arr = af_malloc(count * sizeof(*arr));
    if (arr == NULL) {
      pthread_mutex_unlock(&h->mu);
      return AF_ENOMEM;
    }
    for (size_t i = 0; i < count; i++)
      arr[i] = h->ring[(h->ring_head + first + i) % cap];
  }
  pthread_mutex_unlock(&h->mu);
  *out = arr;
  *n = count;
  return AF_OK;
}

/* ---- callbacks ----------------------------------------------------------- */

static int add_callback(af_health_t *h, af_health_callback_fn fn, void *ctx,
                        bool status_only)
{
  if (h == NULL || fn == NULL)
    return AF_EINVAL;
  int id = AF_ELIMIT;
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < AF_HEALTH_MAX_CALLBACKS; i++) {
    cb_slot_t *s = &h->cbs[i];
    if (s->used)
      continue;
    s->used = true;
    s->removed = false;
    s->busy = 0;
    s->fn = fn;
    s->ctx = ctx;
    s->status_only = status_only;
    s->id = h->next_id++;
    if (h->next_id <= 0) /* wrapped: ids stay > 0 */
      h->next_id = 1;
    id = s->id;
    break;
  }
  pthread_mutex_unlock(&h->mu);
  return id;
}

int af_health_on_change(af_health_t *h, af_health_callback_fn fn, void *ctx)
{
  return add_callback(h, fn, ctx, true);
}

int af_health_on_update(af_health_t *h, af_health_callback_fn fn, void *ctx)
{
  return add_callback(h, fn, ctx, false);
}

void af_health_remove_callback(af_health_t *h, int id)
{
  if (h == NULL || id <= 0)
    return;
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < AF_HEALTH_MAX_CALLBACKS; i++) {
    cb_slot_t *s = &h->cbs[i];
    if (!s->used || s->removed || s->id != id)
      continue;
    s->removed = true;
    if (s->busy == 0) {
      s->used = false;
    } else if (tls_callback_depth == 0) {
      while (s->used && s->id == id && s->busy > 0)
        pthread_cond_wait(&h->cb_idle, &h->mu);
    }
    break;
  }
  pthread_mutex_unlock(&h->mu);
}

/* ---- metrics ------------------------------------------------------------- */

void af_health_metrics(af_health_t *h, af_health_metrics_t *out)
{
  if (out == NULL)
    return;
  memset(out, 0, sizeof(*out));
  if (h == NULL)
    return;
  pthread_mutex_lock(&h->mu);
  out->snapshots_collected = h->snapshots_collected;
  out->callbacks_fired = h->callbacks_fired;
  out->callback_errors = h->callback_errors;
  out->recomputes = h->recomputes;
  out->history_size = h->ring_len;
  out->history_capacity = h->cfg.history_size;
  out->tracked = h->tracked;
  out->status = h->status;
  out->score = h->score;
  pthread_mutex_unlock(&h->mu);
}
