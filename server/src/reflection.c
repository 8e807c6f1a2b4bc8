/*
 * reflection.c - server reflection (v1 and v1alpha) from the embedded
 * FileDescriptorSet.
 *
 * Owns: the decoded set, one packed FileDescriptorProto per file (the
 * bytes reflection returns), the dependency graph as file indices, and a
 * symbol table (fully-qualified messages, nested messages, fields, enums,
 * enum values, services, methods, extensions) mapping to a file.
 * Immutable after create, so lookups need no lock; each bidi call keeps
 * no state between messages (lock-step af_server_add_bidi).
 */
#include "reflection.h"

#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "af_descriptor_set.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

typedef struct {
  char *name;
  size_t file;
  bool is_message;
} symbol_t;

typedef struct {
  const char *name;
  ProtobufCBinaryData bytes;
  size_t *deps;
  size_t n_deps;
} file_t;

struct af_reflection {
  Google__Protobuf__FileDescriptorSet *set;
  file_t *files;
  size_t n_files;
  symbol_t *syms;
  size_t n_syms, cap_syms;
  char **services;
  size_t n_services;
};

static bool add_sym(af_reflection_t *r, const char *scope, const char *name,
                    size_t file, bool is_message, char **out)
{
  if (r->n_syms == r->cap_syms) {
    size_t cap = r->cap_syms ? r->cap_syms * 2 : 256;
    symbol_t *s = af_realloc(r->syms, cap * sizeof *s);
    if (!s)
      return false;
    r->syms = s;
    r->cap_syms = cap;
  }
  size_t n = strlen(scope) + strlen(name) + 2;
  char *fq = af_malloc(n);
  if (!fq)
    return false;
  snprintf(fq, n, "%s%s%s", scope, scope[0] ? "." : "", name);
  r->syms[r->n_syms].name = fq;
  r->syms[r->n_syms].file = file;
  r->syms[r->n_syms].is_message = is_message;
  r->n_syms++;
  if (out)
    *out = fq;
  return true;
}

static bool index_enum(af_reflection_t *r, const char *scope,
                       const Google__Protobuf__EnumDescriptorProto *e,
                       size_t file)
{
  char *fq;
  if (!add_sym(r, scope, e->name, file, false, &fq))
    return false;
  /* enum values live in the enclosing scope, like in C++ */
  for (size_t i = 0; i < e->n_value; i++)
    if (!add_sym(r, scope, e->value[i]->name, file, false, NULL))
      return false;
  return true;
}

static bool index_message(af_reflection_t *r, const char *scope,
                          const Google__Protobuf__DescriptorProto *m,
                          size_t file)
{
  char *fq;
  if (!add_sym(r, scope, m->name, file, true, &fq))
    return false;
  for (size_t i = 0; i < m->n_field; i++)
    if (!add_sym(r, fq, m->field[i]->name, file, false, NULL))
      return false;
  for (size_t i = 0; i < m->n_extension; i++)
    if (!add_sym(r, fq, m->extension[i]->name, file, false, NULL))
      return false;
  for (size_t i = 0; i < m->n_nested_type; i++)
    if (!index_message(r, fq, m->nested_type[i], file))
      return false;
  for (size_t i = 0; i < m->n_enum_type; i++)
    if (!index_enum(r, fq, m->enum_type[i], file))
      return false;
  return true;
}

static bool index_file(af_reflection_t *r, size_t fi)
{
  const Google__Protobuf__FileDescriptorProto *f = r->set->file[fi];
  const char *pkg = f->package ? f->package : "";
  for (size_t i = 0; i < f->n_message_type; i++)
    if (!index_message(r, pkg, f->message_type[i], fi))
      return false;
  for (size_t i = 0; i < f->n_enum_type; i++)
    if (!index_enum(r, pkg, f->enum_type[i], fi))
      return false;
  for (size_t i = 0; i < f->n_extension; i++)
    if (!add_sym(r, pkg, f->extension[i]->name, fi, false, NULL))
      return false;
  for (size_t i = 0; i < f->n_service; i++) {
    char *fq;
    const Google__Protobuf__ServiceDescriptorProto *s = f->service[i];
    if (!add_sym(r, pkg, s->name, fi, false, &fq))
      return false;
    char **sv = af_realloc(r->services, (r->n_services + 1) * sizeof *sv);
    if (!sv)
      return false;
    r->services = sv;
    r->services[r->n_services++] = fq; /* owned by the symbol table */
    for (size_t k = 0; k < s->n_method; k++)
      if (!add_sym(r, fq, s->method[k]->name, fi, false, NULL))
        return false;
  }
  return true;
}

static bool find_file(const af_reflection_t *r, const char *name, size_t *out)
{
  for (size_t i = 0; i < r->n_files; i++)
    if (strcmp(r->files[i].name, name) == 0) {
      *out = i;
      return true;
    }
  return false;
}

void af_reflection_destroy(af_reflection_t *r)
{
  if (!r)
    return;
  for (size_t i = 0; i < r->n_files; i++) {
    af_free(r->files[i].bytes.data);
    af_free(r->files[i].deps);
  }
  af_free(r->files);
  for (size_t i = 0; i < r->n_syms; i++)
    af_free(r->syms[i].name);
  af_free(r->syms);
  af_free(r->services);
  if (r->set)
    protobuf_c_message_free_unpacked(&r->set->base, NULL);
  af_free(r);
}

af_status_t af_reflection_create(af_reflection_t **out, const uint8_t *fds,
                                 size_t len)
{
  if (!out || !fds)
    return AF_EINVAL;
  af_reflection_t *r = af_calloc(1, sizeof *r);
  if (!r)
    return AF_ENOMEM;
  r->set = google__protobuf__file_descriptor_set__unpack(NULL, len, fds);
  if (!r->set) {
    af_free(r);
    return AF_EINVAL;
  }
  r->n_files = r->set->n_file;
  r->files = af_calloc(r->n_files ? r->n_files : 1, sizeof *r->files);
  if (!r->files)
    goto nomem;
  for (size_t i = 0; i < r->n_files; i++) {
    const Google__Protobuf__FileDescriptorProto *f = r->set->file[i];
    file_t *ft = &r->files[i];
    ft->name = f->name ? f->name : "";
    size_t n = protobuf_c_message_get_packed_size(&f->base);
    ft->bytes.data = af_malloc(n ? n : 1);
    if (!ft->bytes.data)
      goto nomem;
    ft->bytes.len = protobuf_c_message_pack(&f->base, ft->bytes.data);
  }
  for (size_t i = 0; i < r->n_files; i++) {
    const Google__Protobuf__FileDescriptorProto *f = r->set->file[i];
    file_t *ft = &r->files[i];
    ft->deps =
        af_calloc(f->n_dependency ? f->n_dependency : 1, sizeof *ft->deps);
    if (!ft->deps)
      goto nomem;
    for (size_t k = 0; k < f->n_dependency; k++) {
      size_t d;
      if (find_file(r, f->dependency[k], &d)) /* --include_imports: all */
        ft->deps[ft->n_deps++] = d;
    }
    if (!index_file(r, i))
      goto nomem;
  }
  *out = r;
  return AF_OK;
nomem:
  af_reflection_destroy(r);
  return AF_ENOMEM;
}

size_t af_reflection_service_count(const af_reflection_t *r)
{
  return r ? r->n_services : 0;
}

static const symbol_t *find_symbol(const af_reflection_t *r, const char *name)
{
  if (name[0] == '.')
    name++;
  for (size_t i = 0; i < r->n_syms; i++)
    if (strcmp(r->syms[i].name, name) == 0)
      return &r->syms[i];
  return NULL;
}

/* Appends file fi and then its transitive deps (each once) to out. */
static void collect(const af_reflection_t *r, size_t fi, bool *seen,
                    ProtobufCBinaryData *out, size_t *n)
{
  if (seen[fi])
    return;
  seen[fi] = true;
  out[(*n)++] = r->files[fi].bytes;
  for (size_t i = 0; i < r->files[fi].n_deps; i++)
    collect(r, r->files[fi].deps[i], seen, out, n);
}

static grpc_status_code on_reflect(af_rpc_t *rpc, const ProtobufCMessage *msg,
                                   void *ctx)
{
  const af_reflection_t *r = ctx;
  const Grpc__Reflection__V1__ServerReflectionRequest *req =
      (const Grpc__Reflection__V1__ServerReflectionRequest *)msg;
  Grpc__Reflection__V1__ServerReflectionResponse resp =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
  resp.valid_host = req->host ? req->host : (char *)"";
  resp.original_request = (Grpc__Reflection__V1__ServerReflectionRequest *)req;

  Grpc__Reflection__V1__FileDescriptorResponse fdr =
      GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
  Grpc__Reflection__V1__ListServiceResponse lsr =
      GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
  Grpc__Reflection__V1__ExtensionNumberResponse enr =
      GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
  Grpc__Reflection__V1__ErrorResponse er =
      GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
  ProtobufCBinaryData *files = NULL;
  bool *seen = NULL;
  Grpc__Reflection__V1__ServiceResponse *svcs = NULL;
  Grpc__Reflection__V1__ServiceResponse **svcp = NULL;
  char errbuf[300];
  const char *not_found = NULL;
  size_t fi = 0;
  bool have_file = false;

  switch (req->message_request_case) {
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
    svcs = af_calloc(r->n_services + 1, sizeof *svcs);
    svcp = af_calloc(r->n_services + 1, sizeof *svcp);
    if (!svcs || !svcp)
      goto nomem;
    for (size_t i = 0; i < r->n_services; i++) {
      grpc__reflection__v1__service_response__init(&svcs[i]);
      svcs[i].name = r->services[i];
      svcp[i] = &svcs[i];
    }
    lsr.n_service = r->n_services;
    lsr.service = svcp;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
    resp.list_services_response = &lsr;
    break;
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
    if (find_file(r, req->file_by_filename, &fi))
      have_file = true;
    else
      not_found = "file not found";
    break;
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL: {
    const symbol_t *s = find_symbol(r, req->file_containing_symbol);
    if (s) {
      fi = s->file;
      have_file = true;
    } else {
      not_found = "symbol not found";
    }
    break;
  }
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
    const symbol_t *s = find_symbol(r, req->all_extension_numbers_of_type);
    if (s && s->is_message) {
      enr.base_type_name = req->all_extension_numbers_of_type;
      resp.message_response_case =
          GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
      resp.all_extension_numbers_response = &enr;
    } else {
      not_found = "type not found";
    }
    break;
  }
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
    not_found = "extension not found";
    break;
  default:
    af_rpc_fail(rpc, GRPC_STATUS_INVALID_ARGUMENT,
                "reflection request has no message_request");
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  if (have_file) {
    files = af_calloc(r->n_files, sizeof *files);
    seen = af_calloc(r->n_files, sizeof *seen);
    if (!files || !seen)
      goto nomem;
    size_t n = 0;
    collect(r, fi, seen, files, &n);
    fdr.n_file_descriptor_proto = n;
    fdr.file_descriptor_proto = files;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    resp.file_descriptor_response = &fdr;
  }
  if (not_found) {
    snprintf(errbuf, sizeof errbuf, "%s", not_found);
    er.error_code = (int32_t)GRPC_STATUS_NOT_FOUND;
    er.error_message = errbuf;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp.error_response = &er;
  }
  af_rpc_send(rpc, &resp.base);
  af_free(files);
  af_free(seen);
  af_free(svcs);
  af_free(svcp);
  return GRPC_STATUS_OK;
nomem:
  af_free(files);
  af_free(seen);
  af_free(svcs);
  af_free(svcp);
  af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return GRPC_STATUS_RESOURCE_EXHAUSTED;
}

static void reflection_free(void *p) { af_reflection_destroy(p); }

af_status_t af_reflection_register(af_server_t *srv, af_reflection_t *r)
{
  if (!srv || !r) {
    af_reflection_destroy(r);
    return AF_EINVAL;
  }
  const ProtobufCMessageDescriptor *d =
      &grpc__reflection__v1__server_reflection_request__descriptor;
  af_status_t s = af_server_on_destroy(srv, reflection_free, r);
  if (s != AF_OK) {
    af_reflection_destroy(r);
    return s;
  }
  /* from here the server owns r, even if a registration below fails */
  s = af_server_add_bidi(
      srv, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", d,
      on_reflect, r);
  if (s == AF_OK)
    s = af_server_add_bidi(
        srv, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        d, on_reflect, r);
  return s;
}

af_status_t af_reflection_register_embedded(af_server_t *srv)
{
  if (!srv)
    return AF_EINVAL;
  af_reflection_t *r;
  af_status_t s =
      af_reflection_create(&r, af_descriptor_set, af_descriptor_set_len);
  if (s != AF_OK)
    return s;
  return af_reflection_register(srv, r);
}
