/*
 * af/alloc.h - the replaceable allocator used by af_core (and libafclient).
 *
 * Thread-safety: af_alloc_replace() must be called before any other af_*
 * function runs and never concurrently with them (like uv_replace_allocator).
 * The af_malloc family is thread-safe if the installed functions are.
 *
 * Tests install a failing allocator to prove that every create function
 * cleans up and reports AF_ENOMEM instead of crashing.
 */
#ifndef AF_ALLOC_H
#define AF_ALLOC_H

#include <stddef.h>

#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  void *(*malloc_fn)(size_t size, void *ctx);
  void *(*realloc_fn)(void *ptr, size_t size, void *ctx);
  void (*free_fn)(void *ptr, void *ctx);
  void *ctx;
} af_allocator_t;

/* Installs *alloc (copied). NULL restores the C library allocator.
 * Returns AF_EINVAL if any function pointer is NULL. */
af_status_t af_alloc_replace(const af_allocator_t *alloc);

/* The same contract as malloc / calloc / realloc / free / strdup. calloc
 * checks nmemb * size for overflow. af_free(NULL) is a no-op. */
void *af_malloc(size_t size);
void *af_calloc(size_t nmemb, size_t size);
void *af_realloc(void *ptr, size_t size);
void af_free(void *ptr);
char *af_strdup(const char *s);

#ifdef __cplusplus
}
#endif
#endif /* AF_ALLOC_H */
