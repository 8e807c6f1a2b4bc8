/*
 * alloc.c - the process-wide replaceable allocator.
 * The table is written only by af_alloc_replace (before anything else runs),
 * read everywhere after.
 */
#include "af/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void *libc_malloc(size_t size, void *ctx)
{
  (void)ctx;
  return malloc(size);
}

static void *libc_realloc(void *ptr, size_t size, void *ctx)
{
  (void)ctx;
  return realloc(ptr, size);
}

static void libc_free(void *ptr, void *ctx)
{
  (void)ctx;
  free(ptr);
}

static af_allocator_t current = {libc_malloc, libc_realloc, libc_free, NULL};

af_status_t af_alloc_replace(const af_allocator_t *alloc)
{
  if (alloc == NULL) {
    current = (af_allocator_t){libc_malloc, libc_realloc, libc_free, NULL};
    return AF_OK;
  }
  if (!alloc->malloc_fn || !alloc->realloc_fn || !alloc->free_fn)
    return AF_EINVAL;
  current = *alloc;
  return AF_OK;
}

void *af_malloc(size_t size) { return current.malloc_fn(size, current.ctx); }

void *af_calloc(size_t nmemb, size_t size)
{
  if (size != 0 && nmemb > SIZE_MAX / size)
    return NULL;
  void *p = current.malloc_fn(nmemb * size, current.ctx);
  if (p != NULL)
    memset(p, 0, nmemb * size);
  return p;
}

void *af_realloc(void *ptr, size_t size)
{
  return current.realloc_fn(ptr, size, current.ctx);
}

void af_free(void *ptr)
{
  if (ptr != NULL)
    current.free_fn(ptr, current.ctx);
}

char *af_strdup(const char *s)
{
  size_t n = strlen(s) + 1;
  char *p = af_malloc(n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}
