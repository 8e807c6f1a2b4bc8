/*
 * reflection.h - gRPC server reflection (grpc.reflection.v1 and v1alpha,
 * identical wire format) answered from a serialized FileDescriptorSet.
 *
 * Thread-safety: the index is immutable after af_reflection_create, so
 * af_reflection_* lookups are thread-safe. Registration on the owner
 * thread before start.
 *
 * Answers list_services, file_by_filename, file_containing_symbol (the
 * file first, then its transitive dependencies, each once) and
 * all_extension_numbers_of_type (empty for known messages). Unknown
 * names and file_containing_extension get error_response NOT_FOUND.
 */
#ifndef AF_REFLECTION_H
#define AF_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_reflection af_reflection_t;

/* Indexes the FileDescriptorSet in fds[0..len) (borrowed; copied as
 * needed). Returns AF_EINVAL if it does not decode, AF_ENOMEM. On failure
 * *out is untouched. */
af_status_t af_reflection_create(af_reflection_t **out, const uint8_t *fds,
                                 size_t len);
void af_reflection_destroy(af_reflection_t *r);

/* Registers /grpc.reflection.v1.ServerReflection/ServerReflectionInfo and
 * the v1alpha path on srv (owner thread, before start). Takes r in every
 * case: the server destroys it in af_server_destroy, or it is destroyed
 * here on failure. */
af_status_t af_reflection_register(af_server_t *srv, af_reflection_t *r);

/* Registers reflection over the embedded af_descriptor_set. */
af_status_t af_reflection_register_embedded(af_server_t *srv);

/* Number of services in the set (for tests and the startup log). */
size_t af_reflection_service_count(const af_reflection_t *r);

#ifdef __cplusplus
}
#endif
#endif /* AF_REFLECTION_H */
