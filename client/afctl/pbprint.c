/*
 * pbprint.c - generic printers over protobuf-c descriptors (see pbprint.h).
 */
#include "pbprint.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pb_encode.h>

ProtobufCMessage *pbp_from_nanopb(const pb_msgdesc_t *fields, const void *msg,
                                  const ProtobufCMessageDescriptor *desc)
{
  size_t n = 0;
  if (!pb_get_encoded_size(&n, fields, msg)) {
    return NULL;
  }
  uint8_t *buf = malloc(n > 0 ? n : 1);
  if (buf == NULL) {
    return NULL;
  }
  pb_ostream_t os = pb_ostream_from_buffer(buf, n);
  ProtobufCMessage *m = NULL;
  if (pb_encode(&os, fields, msg)) {
    m = protobuf_c_message_unpack(desc, NULL, os.bytes_written, buf);
  }
  free(buf);
  return m;
}

void pbp_format_time(char *buf, size_t cap, int64_t seconds, int32_t nanos)
{
  time_t t = (time_t)seconds;
  struct tm tm;
  gmtime_r(&t, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  if (nanos > 0) {
    snprintf(buf, cap, "%s.%03dZ", base, (int)(nanos / 1000000));
  } else {
    snprintf(buf, cap, "%sZ", base);
  }
}

const char *pbp_enum_short(const ProtobufCEnumDescriptor *d, int value)
{
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);
  if (v == NULL) {
    return "?";
  }
  if (d->n_values < 2) {
    return v->name;
  }
  /* Common prefix of the first two value names, cut after a '_'. */
  const char *a = d->values[0].name, *b = d->values[1].name;
  size_t cut = 0;
  for (size_t i = 0; a[i] != '\0' && a[i] == b[i]; i++) {
    if (a[i] == '_') {
      cut = i + 1;
    }
  }
  return strlen(v->name) > cut ? v->name + cut : v->name;
}

static bool is_type(const ProtobufCMessageDescriptor *d, const char *name)
{
  return strcmp(d->short_name, name) == 0 &&
         strcmp(d->package_name, "google.protobuf") == 0;
}

static bool is_wrapper(const ProtobufCMessageDescriptor *d)
{
  size_t n = strlen(d->short_name);
  return strcmp(d->package_name, "google.protobuf") == 0 && n > 5 &&
         strcmp(d->short_name + n - 5, "Value") == 0;
}

static bool is_map_entry(const ProtobufCMessageDescriptor *d)
{
  size_t n = strlen(d->short_name);
  return d->n_fields == 2 && n > 5 &&
         strcmp(d->short_name + n - 5, "Entry") == 0;
}

static void json_string(FILE *out, const char *s)
{
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      fprintf(out, "\\%c", *p);
    } else if (*p < 0x20) {
      fprintf(out, "\\u%04x", *p);
    } else {
      fputc(*p, out);
    }
  }
  fputc('"', out);
}

static void json_name(FILE *out, const char *snake)
{
  fputc('"', out);
  bool up = false;
  for (const char *p = snake; *p; p++) {
    if (*p == '_') {
      up = true;
      continue;
    }
    fputc(up && *p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p, out);
    up = false;
  }
  fputc('"', out);
}

static size_t elem_size(ProtobufCType t)
{
  switch (t) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    return 4;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return 8;
  case PROTOBUF_C_TYPE_FLOAT:
    return sizeof(float);
  case PROTOBUF_C_TYPE_DOUBLE:
    return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_ENUM:
    return sizeof(int);
  case PROTOBUF_C_TYPE_STRING:
    return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(ProtobufCMessage *);
  }
  return 0;
}

/* True if the value at p is the type's default (omitted in JSON). */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    return *(const uint32_t *)p == 0;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return *(const uint64_t *)p == 0;
  case PROTOBUF_C_TYPE_FLOAT:
    return *(const float *)p == 0.0f;
  case PROTOBUF_C_TYPE_DOUBLE:
    return *(const double *)p == 0.0;
  case PROTOBUF_C_TYPE_BOOL:
    return *(const protobuf_c_boolean *)p == 0;
  case PROTOBUF_C_TYPE_ENUM:
    return *(const int *)p == 0;
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(char *const *)p;
    return s == NULL || s[0] == '\0';
  }
  case PROTOBUF_C_TYPE_BYTES:
    return ((const ProtobufCBinaryData *)p)->len == 0;
  case PROTOBUF_C_TYPE_MESSAGE:
    return *(ProtobufCMessage *const *)p == NULL;
  }
  return true;
}

static void json_message(FILE *out, const ProtobufCMessage *m);

static void duration_str(char *buf, size_t cap, int64_t s, int32_t n)
{
  if (n == 0) {
    snprintf(buf, cap, "%" PRId64 "s", s);
  } else {
    snprintf(buf, cap, "%" PRId64 ".%03ds", s, (int)(n / 1000000));
  }
}

/* Time-like and wrapper messages print as a scalar; true if handled. */
static bool special_value(FILE *out, const ProtobufCMessage *m, bool json)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  char buf[64];
  if (is_type(d, "Timestamp") || is_type(d, "Duration")) {
    /* both: int64 seconds = 1; int32 nanos = 2 */
    const int64_t *sec =
        (const int64_t *)((const char *)m + d->fields[0].offset);
    const int32_t *ns =
        (const int32_t *)((const char *)m + d->fields[1].offset);
    if (is_type(d, "Timestamp")) {
      pbp_format_time(buf, sizeof buf, *sec, *ns);
    } else {
      duration_str(buf, sizeof buf, *sec, *ns);
    }
    if (json) {
      json_string(out, buf);
    } else {
      fputs(buf, out);
    }
    return true;
  }
  if (is_wrapper(d) && d->n_fields == 1) {
    const ProtobufCFieldDescriptor *f = &d->fields[0];
    const void *p = (const char *)m + f->offset;
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32:
      fprintf(out, "%" PRIu32, *(const uint32_t *)p);
      return true;
    case PROTOBUF_C_TYPE_INT32:
      fprintf(out, "%" PRId32, *(const int32_t *)p);
      return true;
    case PROTOBUF_C_TYPE_DOUBLE:
      fprintf(out, "%g", *(const double *)p);
      return true;
    default:
      return false;
    }
  }
  return false;
}

static void json_value(FILE *out, const ProtobufCFieldDescriptor *f,
                       const void *p)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    fprintf(out, "%" PRId32, *(const int32_t *)p);
    break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    fprintf(out, "%" PRIu32, *(const uint32_t *)p);
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    fprintf(out, "\"%" PRId64 "\"", *(const int64_t *)p);
    break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    fprintf(out, "\"%" PRIu64 "\"", *(const uint64_t *)p);
    break;
  case PROTOBUF_C_TYPE_FLOAT:
    fprintf(out, "%.9g", (double)*(const float *)p);
    break;
  case PROTOBUF_C_TYPE_DOUBLE:
    fprintf(out, "%.17g", *(const double *)p);
    break;
  case PROTOBUF_C_TYPE_BOOL:
    fputs(*(const protobuf_c_boolean *)p ? "true" : "false", out);
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)p);
    if (v != NULL) {
      json_string(out, v->name);
    } else {
      fprintf(out, "%d", *(const int *)p);
    }
    break;
  }
  case PROTOBUF_C_TYPE_STRING:
    json_string(out, *(char *const *)p ? *(char *const *)p : "");
    break;
  case PROTOBUF_C_TYPE_BYTES:
    fputs("\"\"", out); /* no bytes fields in antifragility.v1 */
    break;
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
    if (sub == NULL) {
      fputs("null", out);
    } else if (!special_value(out, sub, true)) {
      json_message(out, sub);
    }
    break;
  }
  }
}

static void json_message(FILE *out, const ProtobufCMessage *m)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  fputc('{', out);
  bool first = true;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    const char *base = (const char *)m;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      if (n == 0) {
        continue;
      }
      const char *arr = *(char *const *)(base + f->offset);
      if (!first) {
        fputc(',', out);
      }
      first = false;
      json_name(out, f->name);
      fputc(':', out);
      bool map =
          f->type == PROTOBUF_C_TYPE_MESSAGE &&
          is_map_entry((const ProtobufCMessageDescriptor *)f->descriptor);
      fputc(map ? '{' : '[', out);
      for (size_t k = 0; k < n; k++) {
        if (k > 0) {
          fputc(',', out);
        }
        const void *p = arr + k * elem_size(f->type);
        if (map) {
          const ProtobufCMessage *e = *(ProtobufCMessage *const *)p;
          const ProtobufCMessageDescriptor *ed = e->descriptor;
          const char *key =
              *(char *const *)((const char *)e + ed->fields[0].offset);
          json_string(out, key ? key : "");
          fputc(':', out);
          json_value(out, &ed->fields[1],
                     (const char *)e + ed->fields[1].offset);
        } else {
          json_value(out, f, p);
        }
      }
      fputc(map ? '}' : ']', out);
      continue;
    }
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset != 0 &&
        f->type != PROTOBUF_C_TYPE_MESSAGE &&
        f->type != PROTOBUF_C_TYPE_STRING &&
        !*(const protobuf_c_boolean *)(base + f->quantifier_offset)) {
      continue;
    }
    const void *p = base + f->offset;
    if (is_default(f, p)) {
      continue;
    }
    if (!first) {
      fputc(',', out);
    }
    first = false;
    json_name(out, f->name);
    fputc(':', out);
    json_value(out, f, p);
  }
  fputc('}', out);
}

void pbp_json(FILE *out, const ProtobufCMessage *m) { json_message(out, m); }

static void text_scalar(FILE *out, const ProtobufCFieldDescriptor *f,
                        const void *p)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    fprintf(out, "%" PRId64, *(const int64_t *)p);
    break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    fprintf(out, "%" PRIu64, *(const uint64_t *)p);
    break;
  case PROTOBUF_C_TYPE_DOUBLE:
    fprintf(out, "%g", *(const double *)p);
    break;
  case PROTOBUF_C_TYPE_ENUM:
    fputs(pbp_enum_short(f->descriptor, *(const int *)p), out);
    break;
  case PROTOBUF_C_TYPE_STRING:
    fputs(*(char *const *)p ? *(char *const *)p : "", out);
    break;
  default:
    json_value(out, f, p);
  }
}

static void text_field(FILE *out, const ProtobufCFieldDescriptor *f,
                       const void *p, int indent, const char *name)
{
  if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
    if (sub == NULL) {
      return;
    }
    fprintf(out, "%*s%s: ", indent, "", name);
    if (special_value(out, sub, false)) {
      fputc('\n', out);
    } else {
      fputc('\n', out);
      pbp_text(out, sub, indent + 2);
    }
    return;
  }
  fprintf(out, "%*s%s: ", indent, "", name);
  text_scalar(out, f, p);
  fputc('\n', out);
}

void pbp_text(FILE *out, const ProtobufCMessage *m, int indent)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = (const char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      if (n == 0) {
        continue;
      }
      const char *arr = *(char *const *)(base + f->offset);
      if (f->type != PROTOBUF_C_TYPE_MESSAGE) {
        fprintf(out, "%*s%s: ", indent, "", f->name);
        for (size_t k = 0; k < n; k++) {
          if (k > 0) {
            fputs(", ", out);
          }
          text_scalar(out, f, arr + k * elem_size(f->type));
        }
        fputc('\n', out);
        continue;
      }
      for (size_t k = 0; k < n; k++) {
        char name[160];
        snprintf(name, sizeof name, "%s[%zu]", f->name, k);
        text_field(out, f, arr + k * elem_size(f->type), indent, name);
      }
      continue;
    }
    const void *p = base + f->offset;
    if (f->type == PROTOBUF_C_TYPE_STRING && is_default(f, p)) {
      continue;
    }
    if (f->type == PROTOBUF_C_TYPE_ENUM && *(const int *)p == 0) {
      continue;
    }
    text_field(out, f, p, indent, f->name);
  }
}
